//! `--vmlinux`, `--kallsyms`, `--kaslr-offset`: the guest's symbol sources on the command line,
//! mapped onto the symbolizer's typed [`symbolizer::GuestSymbols`].
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use symbolizer::{GuestSymbols, KaslrSlide, SymbolizeError, Symbolizer};

/// Where guest function names come from (report, diff, symbolize).
#[derive(clap::Args, Debug, Clone)]
pub struct GuestSymbolArgs {
    /// The guest kernel ELF (vmlinux) to name guest functions with (with DWARF for file:line).
    #[arg(long, value_name = "ELF")]
    pub vmlinux: Option<PathBuf>,
    /// A copy of the guest's /proc/kallsyms (read as root inside the guest). Alone: symbols
    /// come from it. With --vmlinux: only used to detect the KASLR slide.
    #[arg(long, value_name = "FILE")]
    pub kallsyms: Option<PathBuf>,
    /// Guest KASLR slide (runtime − link address) in hex, or `auto` to detect it from
    /// --vmlinux and --kallsyms (the default when both are given).
    #[arg(long, value_name = "HEX|auto", allow_hyphen_values = true, value_parser = parse_slide)]
    pub kaslr_offset: Option<KaslrSlide>,
}

/// `auto`, or a hex slide, optionally negative (`-0x1000`).
fn parse_slide(s: &str) -> Result<KaslrSlide, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(KaslrSlide::Auto);
    }
    let (neg, digits) = match s.trim().strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.trim()),
    };
    let v = profiler_common::parse_hex(digits).ok_or_else(|| format!("{s:?} is not hex (e.g. 0x1e000000) or `auto`"))?;
    Ok(KaslrSlide::Offset(if neg { (v as i64).wrapping_neg() } else { v as i64 }))
}

impl GuestSymbolArgs {
    pub fn to_sources(&self) -> GuestSymbols {
        GuestSymbols { vmlinux: self.vmlinux.clone(), kallsyms: self.kallsyms.clone(), kaslr: self.kaslr_offset.unwrap_or_default() }
    }

    /// The symbolizer, if symbols were given; `required_by` names an option that needs them.
    /// Symbolizer warnings (no DWARF, ...) go to stderr.
    pub fn load(&self, required_by: Option<&str>) -> Result<Option<Symbolizer>> {
        let sym = self.to_sources().load().map_err(flag_error)?;
        if let (None, Some(option)) = (&sym, required_by) {
            return Err(anyhow!("{option} needs the guest's symbols: add --vmlinux ELF or --kallsyms FILE"));
        }
        for w in sym.iter().flat_map(|s| s.warnings()) {
            eprintln!("warning: {w}");
        }
        Ok(sym)
    }
}

/// The library's error, said in terms of the command line.
fn flag_error(e: SymbolizeError) -> anyhow::Error {
    match e {
        SymbolizeError::SlideWithoutSymbols => anyhow!("--kaslr-offset needs --vmlinux or --kallsyms"),
        SymbolizeError::AutoSlideNeedsKallsyms { .. } => anyhow!("--kaslr-offset auto needs the guest's kallsyms too: add --kallsyms FILE"),
        SymbolizeError::AutoSlideNeedsVmlinux { .. } => {
            anyhow!("--kaslr-offset auto needs --vmlinux too (kallsyms addresses are already runtime addresses)")
        }
        other => anyhow::Error::new(other),
    }
}
