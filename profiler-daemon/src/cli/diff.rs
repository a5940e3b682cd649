//! `kvmprof diff`.
use std::path::PathBuf;

use anyhow::Result;
use clap::ValueEnum;
use profiler_daemon::analysis::diff::{self, DiffBy};
use profiler_daemon::model::recording;
use profiler_daemon::render::diff::{render, DiffFormat};

use super::symbols::GuestSymbolArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiffByArg {
    /// One row per trap address (RIP) and exit reason.
    Rip,
    /// One row per guest function (needs --vmlinux or --kallsyms).
    Function,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiffFormatArg {
    Table,
    Json,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  kvmprof diff unbatched.kvmprof batched.kvmprof\n  \
kvmprof diff before.kvmprof after.kvmprof --vmlinux guest.elf --by function\n  \
kvmprof diff before.kvmprof after.kvmprof --vmlinux guest.elf --format json --top 20\n\n\
Each row: exits before and after, the change and its % (\"new\" when there were none \
before), and the same for the time spent in those exits; rows are sorted by the absolute \
change in exits. Both recordings are named with the same guest symbols.")]
pub struct DiffArgs {
    /// The recording before the change (e.g. without --batch-pio).
    before: PathBuf,
    /// The recording after the change.
    after: PathBuf,
    /// What one row stands for.
    #[arg(long, value_enum, default_value = "rip")]
    by: DiffByArg,
    #[command(flatten)]
    symbols: GuestSymbolArgs,
    /// Show only the N rows with the largest change (default: 25 for tables, all for JSON).
    #[arg(long, value_name = "N")]
    top: Option<usize>,
    #[arg(long, value_enum, default_value = "table")]
    format: DiffFormatArg,
}

pub fn run(a: DiffArgs) -> Result<i32> {
    let before = recording::load_checked(&a.before)?;
    let after = recording::load_checked(&a.after)?;
    let sym = a.symbols.load_for((a.by == DiffByArg::Function).then_some("--by function"), &[&before, &after])?;
    let resolve = |rip: u64| sym.as_ref().and_then(|s| s.function_name(rip));
    let by = match a.by {
        DiffByArg::Rip => DiffBy::Rip,
        DiffByArg::Function => DiffBy::Function,
    };
    let d = diff::build(&before, &after, by, &resolve);
    let format = match a.format {
        DiffFormatArg::Table => DiffFormat::Table,
        DiffFormatArg::Json => DiffFormat::Json,
    };
    let top = a.top.or((format == DiffFormat::Table).then_some(25));
    super::emit(&render(&d, format, top))
}
