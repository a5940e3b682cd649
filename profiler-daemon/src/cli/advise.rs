//! `kvmprof advise`.
use std::path::PathBuf;

use anyhow::Result;
use clap::ValueEnum;
use profiler_daemon::analysis::advise::{self, AdviseOptions};
use profiler_daemon::model::recording;
use profiler_daemon::render::advise::{render, Format};

use super::symbols::GuestSymbolArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Table,
    Json,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  kvmprof record -o disk.kvmprof -- tinyvmm run --workload disk-write --count 100 --disk disk.img\n  \
kvmprof advise disk.kvmprof --vmlinux guest.elf\n  \
kvmprof advise vm.kvmprof --vmlinux vmlinux --kallsyms guest-kallsyms.txt --min-run 4 --format json\n\n\
A run is a sequence of port-I/O (or MMIO) exits of one vCPU, all writes or all reads, each starting at most \
`record --max-gap` after the previous one re-entered the guest. Each candidate is one such access sequence, \
ranked by the exits that batching it into one hypercall would save: (run length - 1) x times it ran.")]
pub struct AdviseArgs {
    /// A recording from `kvmprof record` or `kvmprof import`.
    file: PathBuf,
    #[command(flatten)]
    symbols: GuestSymbolArgs,
    /// Only runs of at least N exits.
    #[arg(long, value_name = "N", default_value_t = 2)]
    min_run: u32,
    /// Show only the N best candidates (default: 20 for the table, all for JSON).
    #[arg(long, value_name = "N")]
    top: Option<usize>,
    #[arg(long, value_enum, default_value = "table")]
    format: FormatArg,
    /// Also list, per guest function, how many of its exits lie in runs (the JSON always has
    /// it, as "functions").
    #[arg(long)]
    by_function: bool,
}

pub fn run(a: AdviseArgs) -> Result<i32> {
    let rec = recording::load(&a.file)?;
    let sym = a.symbols.load_for(None, &[&rec])?;
    let resolve = |rip: u64| sym.as_ref().and_then(|s| s.function_name(rip));
    let advice = advise::build(&rec, AdviseOptions { min_run: a.min_run }, &resolve)?;
    let format = match a.format {
        FormatArg::Table => Format::Table,
        FormatArg::Json => Format::Json,
    };
    let top = a.top.or((format == Format::Table).then_some(20));
    super::emit(&render(&advice, rec.meta.source, format, top, a.by_function))
}

/// `--max-gap`: `50us`, `2ms`, `800ns`, `1s`; a plain number is microseconds. In ns.
pub fn parse_gap(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ns") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix("us").or_else(|| t.strip_suffix("µs")) {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e6)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1e9)
    } else {
        (t, 1e3)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v * scale < 1e15 => Ok((v * scale).round() as u64),
        _ => Err(format!("not a duration (e.g. 50us, 2ms, 800ns): {s}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn gaps_parse_with_units() {
        assert_eq!(super::parse_gap("50us"), Ok(50_000));
        assert_eq!(super::parse_gap("2ms"), Ok(2_000_000));
        assert_eq!(super::parse_gap("800ns"), Ok(800));
        assert_eq!(super::parse_gap("7"), Ok(7_000));
        assert!(super::parse_gap("fast").is_err());
        assert!(super::parse_gap("-1us").is_err());
    }
}
