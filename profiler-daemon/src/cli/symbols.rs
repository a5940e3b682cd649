//! `--vmlinux`, `--kallsyms`, `--kaslr-offset`: the guest's symbol sources on the command line,
//! mapped onto the symbolizer's typed [`symbolizer::GuestSymbols`].
use std::path::PathBuf;

use anyhow::{anyhow, Result};
use symbolizer::kaslr::SlideEstimate;
use symbolizer::{GuestSymbols, KaslrSlide, SymbolizeError, Symbolizer};

use profiler_daemon::model::Profile;

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
    /// Guest KASLR slide (runtime − link address) in hex, or `auto` to detect it: from
    /// --kallsyms when given (the default when both files are), else from the recorded exit
    /// RIPs and --vmlinux alone (report, diff, advise: the 2 MiB-aligned slide that puts the
    /// RIPs on instructions of their exits' kinds; refused when the evidence is thin).
    #[arg(long, value_name = "HEX|auto", allow_hyphen_values = true, value_parser = parse_slide)]
    pub kaslr_offset: Option<KaslrSlide>,
}

/// `auto`, or a hex slide, optionally negative (`-0x1000`).
pub fn parse_slide(s: &str) -> Result<KaslrSlide, String> {
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
        self.load_for(required_by, &[])
    }

    /// As [`load`](Self::load), for recordings: `--kaslr-offset auto` with only a vmlinux
    /// takes the slide from their exits, and says on stderr what it found.
    pub fn load_for(&self, required_by: Option<&str>, profiles: &[&Profile]) -> Result<Option<Symbolizer>> {
        let sources = self.to_sources();
        let sym = if profiles.is_empty() {
            sources.load().map_err(flag_error)?
        } else {
            let evidence = profiler_daemon::analysis::slide::evidence(profiles.iter().copied());
            let loaded = sources.load_with_exits(&evidence).map_err(flag_error)?;
            if let Some((_, Some(est))) = &loaded {
                eprintln!("{}", slide_line(est));
            }
            loaded.map(|(s, _)| s)
        };
        if let (None, Some(option)) = (&sym, required_by) {
            return Err(anyhow!("{option} needs the guest's symbols: add --vmlinux ELF or --kallsyms FILE"));
        }
        for w in sym.iter().flat_map(|s| s.warnings()) {
            eprintln!("warning: {w}");
        }
        Ok(sym)
    }
}

/// What `--kaslr-offset auto` found, in one line.
fn slide_line(e: &SlideEstimate) -> String {
    let runner_up = match e.runner_up {
        Some((slide, n)) => format!("next best 0x{slide:x} with {n}"),
        None => "no other slide matched any".into(),
    };
    format!(
        "kaslr: slide 0x{:x} from the exits: {} of {} exit RIPs in the kernel text are on exit instructions ({} distinct RIPs; {runner_up})",
        e.slide, e.matched, e.in_text, e.rips
    )
}

/// The library's error, said in terms of the command line.
fn flag_error(e: SymbolizeError) -> anyhow::Error {
    match e {
        SymbolizeError::SlideWithoutSymbols => anyhow!("--kaslr-offset needs --vmlinux or --kallsyms"),
        SymbolizeError::AutoSlideNeedsKallsyms { .. } => anyhow!(
            "--kaslr-offset auto with only --vmlinux finds the slide from a recording's exits (report, diff, advise); here add --kallsyms FILE or give the slide in hex"
        ),
        SymbolizeError::AutoSlideNeedsVmlinux { .. } => {
            anyhow!("--kaslr-offset auto needs --vmlinux too (kallsyms addresses are already runtime addresses)")
        }
        other => anyhow::Error::new(other),
    }
}
