//! `kvmprof symbolize`: guest RIPs → function+offset, file:line and inlined frames.
use anyhow::{bail, Context, Result};

use super::symbols::GuestSymbolArgs;
use profiler_daemon::render::symbolize::{render_json, render_text, Answer};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymbolizeFormat {
    /// `0xADDR function+0xOFF file:line`, inlined callers on indented lines below.
    Text,
    /// `[{"addr": "0x...", "frames": [{"function", "offset", "file", "line"}, ...]}]`.
    Json,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
kvmprof symbolize --vmlinux /usr/lib/debug/boot/vmlinux-$(uname -r) 0xffffffff81a06274\n  \
kvmprof symbolize --vmlinux vmlinux --kallsyms guest-kallsyms.txt ffffffff9fa06274   (KASLR slide detected)\n  \
kvmprof symbolize --kallsyms guest-kallsyms.txt --format json ffffffffc0a01234\n\n\
Frames are printed innermost first: an address inside inlined code shows the inlined \
function, then each caller it was inlined into, down to the real function. Unknown file or \
line prints as `??` / `?`. An address outside every symbol prints `0xADDR [unknown]` \
(JSON: a frame with null fields) and makes the command exit non-zero.")]
pub struct SymbolizeArgs {
    #[command(flatten)]
    pub symbols: GuestSymbolArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SymbolizeFormat::Text)]
    pub format: SymbolizeFormat,
    /// Guest addresses (RIPs), hex with or without 0x.
    #[arg(value_name = "ADDR", required = true)]
    pub addrs: Vec<String>,
}

pub fn run(args: &SymbolizeArgs) -> Result<i32> {
    let addrs: Vec<u64> = args
        .addrs
        .iter()
        .map(|a| profiler_common::parse_hex(a).with_context(|| format!("{a:?} is not a hex address (e.g. 0xffffffff81a06274)")))
        .collect::<Result<_>>()?;
    let sym = args.symbols.load(None)?.context("give --vmlinux ELF or --kallsyms FILE")?;
    let answers: Vec<Answer> = addrs.iter().map(|&a| (a, sym.symbolize(a).ok())).collect();
    let out = match args.format {
        SymbolizeFormat::Text => render_text(&answers),
        SymbolizeFormat::Json => render_json(&answers),
    };
    super::emit(&out)?;
    let unknown: Vec<String> = answers.iter().filter(|(_, f)| f.is_none()).map(|(a, _)| format!("0x{a:x}")).collect();
    match unknown.len() {
        0 => Ok(0),
        1 => bail!("{} is outside every known symbol: check that the vmlinux/kallsyms match the guest and the --kaslr-offset", unknown[0]),
        n => bail!(
            "{n} of {} addresses are outside every known symbol ({}): check that the vmlinux/kallsyms match the guest and the --kaslr-offset",
            answers.len(),
            unknown.join(", ")
        ),
    }
}
