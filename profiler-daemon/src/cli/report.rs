//! `kvmprof report`.
use std::path::PathBuf;

use std::io::IsTerminal;

use anyhow::{anyhow, Context, Result};
use clap::ValueEnum;
use profiler_daemon::analysis::report::{self, GroupBy};
use profiler_daemon::model::recording;
use profiler_daemon::render::{self, report::Format};

use super::symbols::GuestSymbolArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupByArg {
    /// One row per trap address (RIP) and reason: the paper's Tables 1 and 2.
    Rip,
    /// One row per guest function (needs --vmlinux or --kallsyms).
    Function,
    /// One row per exit reason.
    Reason,
    /// One row per I/O port and direction (port-I/O exits only).
    Port,
    /// One row per vCPU thread.
    Vcpu,
    /// One row per trap address and caller: the paper's Table 3.
    Caller,
    /// One row per VM process, named by its `-name` (QEMU) / `--name` (tinyvmm) or its
    /// process name: for recordings of several VMs (`record` without --pid or a command).
    Vm,
}

impl From<GroupByArg> for GroupBy {
    fn from(g: GroupByArg) -> GroupBy {
        match g {
            GroupByArg::Rip => GroupBy::Rip,
            GroupByArg::Function => GroupBy::Function,
            GroupByArg::Reason => GroupBy::Reason,
            GroupByArg::Port => GroupBy::Port,
            GroupByArg::Vcpu => GroupBy::Vcpu,
            GroupByArg::Caller => GroupBy::Caller,
            GroupByArg::Vm => GroupBy::Vm,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Table,
    Json,
    Csv,
    /// Folded stacks (`caller;function;reason count`, weight = exits) for flame graphs:
    /// `inferno-flamegraph` / `flamegraph.pl`, or `kvmprof report --svg FILE`.
    Folded,
    /// A gzipped pprof profile (binary; give -o FILE): stacks caller -> function -> reason,
    /// values exits and exit time (ns), for `go tool pprof`, Pyroscope, Parca.
    Pprof,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Table => Format::Table,
            FormatArg::Json => Format::Json,
            FormatArg::Csv => Format::Csv,
            FormatArg::Folded => Format::Folded,
            // Binary: written by `run` before any text format is chosen.
            FormatArg::Pprof => Format::Folded,
        }
    }
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  kvmprof report run.kvmprof\n  \
kvmprof report run.kvmprof --vmlinux vmlinux --by function\n  \
kvmprof report run.kvmprof --kallsyms guest-kallsyms.txt --by rip --format json --top 10\n  \
kvmprof report run.kvmprof --by port --format csv\n\n\
Guest functions: give the guest kernel's vmlinux (with DWARF for file:line), or a copy of the \
guest's /proc/kallsyms. A KASLR guest needs --kaslr-offset HEX, or `auto` with both files.")]
pub struct ReportArgs {
    /// A recording from `kvmprof record` or `kvmprof import`.
    file: PathBuf,
    #[command(flatten)]
    symbols: GuestSymbolArgs,
    /// What one row stands for.
    #[arg(long, value_enum, default_value = "rip")]
    by: GroupByArg,
    /// Show only the N rows with the most exits (default: 25 for tables, all otherwise).
    #[arg(long, value_name = "N")]
    top: Option<usize>,
    #[arg(long, value_enum, default_value = "table")]
    format: FormatArg,
    /// Also write a flame graph of the exits (stack caller;function;reason) to FILE as SVG.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Write the output to FILE instead of stdout (needed for --format pprof on a terminal).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn run(a: ReportArgs) -> Result<i32> {
    let rec = recording::load(&a.file)?;
    let sym = a.symbols.load((a.by == GroupByArg::Function).then_some("--by function"))?;
    let resolve = |rip: u64| sym.as_ref().and_then(|s| s.function_name(rip));
    if a.format == FormatArg::Pprof {
        let gz = render::pprof::from_profile(&rec, &resolve);
        return match &a.output {
            Some(path) => write_file(path, &gz),
            None if std::io::stdout().is_terminal() => Err(anyhow!("--format pprof is binary: give -o FILE (or redirect stdout)")),
            None => emit_bytes(&gz),
        };
    }
    let rep = report::build(&rec, a.by.into(), &resolve);
    let format = Format::from(a.format);
    let top = a.top.or((format == Format::Table).then_some(25));
    if let Some(path) = &a.svg {
        let title = format!("VM exits of {}", a.file.display());
        render::flame::write_svg(&render::report::render(&rep, Format::Folded, None), &title, path)?;
    }
    let text = render::report::render(&rep, format, top);
    match &a.output {
        Some(path) => write_file(path, text.as_bytes()),
        None => super::emit(&text),
    }
}

/// Binary output to stdout; a closed pipe is not an error (as `super::emit`).
fn emit_bytes(bytes: &[u8]) -> Result<i32> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        r => r.map(|_| 0).context("writing the output"),
    }
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<i32> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(0)
}
