use std::path::PathBuf;

/// Every message is one line that names the input and says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SymbolizeError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file: pass a vmlinux with --vmlinux, or a /proc/kallsyms copy with --kallsyms")]
    NotElf { path: PathBuf },
    #[error("{path} is a damaged or truncated ELF ({reason}): copy the vmlinux again")]
    BadElf { path: PathBuf, reason: String },
    #[error("{path} has no symbols (stripped ELF): use the unstripped vmlinux (Debian: linux-image-*-dbg, /usr/lib/debug/boot/) or --kallsyms")]
    NoSymbols { path: PathBuf },
    #[error("{path} has no kallsyms lines: pass a copy of the guest's /proc/kallsyms")]
    EmptyKallsyms { path: PathBuf },
    #[error("{path}:{line}: not a kallsyms line ({reason}); expected `ADDRESS TYPE NAME [module]` as in /proc/kallsyms")]
    BadKallsyms { path: PathBuf, line: usize, reason: String },
    #[error("{path}: every kallsyms address is zero: read /proc/kallsyms as root (kernel.kptr_restrict hides addresses otherwise)")]
    ZeroKallsyms { path: PathBuf },
    #[error("{path} has no `_text` or `_stext` symbol: give the KASLR slide by hand with --kaslr-offset HEX")]
    NoTextSymbol { path: PathBuf },
    #[error("0x{addr:x} is outside every known symbol: check that the vmlinux/kallsyms match the guest and the --kaslr-offset")]
    NotFound { addr: u64 },
}
