use std::path::PathBuf;

/// Every message is one line that names the input and says what to do about it.
///
/// Messages speak of inputs (vmlinux, kallsyms, KASLR slide), never of a program's
/// command-line options: the caller knows how its user gave them and can add that.
#[derive(Debug, thiserror::Error)]
pub enum SymbolizeError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file: give a guest vmlinux here (a copy of /proc/kallsyms is read as kallsyms, not as an ELF)")]
    NotElf { path: PathBuf },
    #[error("{path} is a damaged or truncated ELF ({reason}): copy the vmlinux again")]
    BadElf { path: PathBuf, reason: String },
    #[error("{path} has no symbols (stripped ELF): use the unstripped vmlinux (Debian: linux-image-*-dbg, /usr/lib/debug/boot/) or the guest's kallsyms")]
    NoSymbols { path: PathBuf },
    #[error("{path} has no kallsyms lines: give a copy of the guest's /proc/kallsyms")]
    EmptyKallsyms { path: PathBuf },
    #[error("{path}:{line}: not a kallsyms line ({reason}); expected `ADDRESS TYPE NAME [module]` as in /proc/kallsyms")]
    BadKallsyms { path: PathBuf, line: usize, reason: String },
    #[error("{path}: every kallsyms address is zero: read /proc/kallsyms as root (kernel.kptr_restrict hides addresses otherwise)")]
    ZeroKallsyms { path: PathBuf },
    #[error("{path} has no `_text` or `_stext` symbol, so the KASLR slide cannot be detected from it: give the slide explicitly")]
    NoTextSymbol { path: PathBuf },
    #[error("0x{addr:x} is outside every known symbol: check that the vmlinux/kallsyms match the guest and the KASLR slide")]
    NotFound { addr: u64 },
    /// [`GuestSymbols`](crate::GuestSymbols): a slide (explicit or automatic) with neither file.
    #[error("a KASLR slide was given without guest symbols: give a vmlinux or the guest's kallsyms for it to apply to")]
    SlideWithoutSymbols,
    /// [`GuestSymbols`](crate::GuestSymbols): automatic slide with a vmlinux but no kallsyms.
    #[error("detecting the KASLR slide of {vmlinux} needs the guest's kallsyms too (its runtime `_text` address): give them, or give the slide explicitly")]
    AutoSlideNeedsKallsyms { vmlinux: PathBuf },
    /// [`GuestSymbols::load_with_exits`](crate::GuestSymbols::load_with_exits): the exits do
    /// not give the slide with enough confidence.
    #[error("cannot find the KASLR slide of {vmlinux} from the recorded exits: {reason}")]
    SlideNotFound { vmlinux: PathBuf, reason: crate::kaslr::SlideRefused },
    /// [`GuestSymbols`](crate::GuestSymbols): automatic slide with kallsyms but no vmlinux.
    #[error("detecting a KASLR slide needs a vmlinux besides {kallsyms}: kallsyms addresses are already runtime addresses, so kallsyms alone needs no slide")]
    AutoSlideNeedsVmlinux { kallsyms: PathBuf },
}
