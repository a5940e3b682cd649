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
    /// One row per guest stack: the exiting function and its callers, innermost first, as
    /// walked at each exit by `record --stack-depth N` (N > 1), with the method (unwind table
    /// or frame pointer). With --format folded or --svg: full-stack flame graphs.
    Stack,
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
            GroupByArg::Stack => GroupBy::Stack,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Table,
    Json,
    Csv,
    /// Folded stacks (`caller;function;reason count`, weight = exits; with --by stack the
    /// whole walked guest stack, outermost first) for flame graphs:
    /// `inferno-flamegraph` / `flamegraph.pl`, or `kvmprof report --svg FILE`.
    Folded,
    /// A gzipped pprof profile (binary; give -o FILE): stacks caller -> function -> reason,
    /// values exits and exit time (ns), for `go tool pprof`, Pyroscope, Parca.
    Pprof,
    /// A Perfetto trace (binary protobuf; give -o FILE): every recorded exit as a slice on
    /// its vCPU thread's track, for ui.perfetto.dev. Needs a recording made with --records.
    Perfetto,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Table => Format::Table,
            FormatArg::Json => Format::Json,
            FormatArg::Csv => Format::Csv,
            FormatArg::Folded => Format::Folded,
            // Binary: written by `run` before any text format is chosen.
            FormatArg::Pprof | FormatArg::Perfetto => Format::Folded,
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
    /// Also write a flame graph of the exits (stack caller;function;reason; with --by stack
    /// the whole walked guest stack) to FILE as SVG.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Write the output to FILE instead of stdout (needed for --format pprof on a terminal).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn run(a: ReportArgs) -> Result<i32> {
    let rec = recording::load_checked(&a.file)?;
    let sym = a.symbols.load_for((a.by == GroupByArg::Function).then_some("--by function"), &[&rec])?;
    let resolve = |rip: u64| sym.as_ref().and_then(|s| s.function_name(rip));
    if a.format == FormatArg::Perfetto {
        return perfetto(&a, &rec, &resolve);
    }
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

/// `--format perfetto`: streams the records (bounded memory) into a Perfetto trace.
fn perfetto(a: &ReportArgs, rec: &profiler_daemon::model::Profile, resolve: &dyn Fn(u64) -> Option<String>) -> Result<i32> {
    use profiler_daemon::render::perfetto::PerfettoWriter;
    if rec.records.is_none() && rec.records_file.is_none() {
        return Err(anyhow!(
            "{} has no per-exit records: record it with `kvmprof record --records` (or `kvmprof import` a trace) for a Perfetto timeline",
            a.file.display()
        ));
    }
    let Some(path) = &a.output else {
        return Err(anyhow!("--format perfetto is binary: give -o FILE (e.g. -o trace.pftrace)"));
    };
    // A slice's name: the guest function, else the RIP; looked up once per exit site.
    let names: Vec<String> = rec.exits.iter().map(|e| resolve(e.rip).unwrap_or_else(|| render::hex(e.rip))).collect();
    let file = std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut w = PerfettoWriter::new(std::io::BufWriter::with_capacity(1 << 20, file));
    let mut failed = w.tracks(rec).err();
    let read = recording::for_each_record(rec, |r| {
        if failed.is_none() {
            failed = w.slice(&rec.exits[r.exit], &r, names[r.exit].clone()).err();
        }
    });
    let result = match (read, failed) {
        (Err(e), _) => Err(anyhow::Error::new(e)),
        (_, Some(e)) => Err(anyhow::Error::new(e).context(format!("cannot write {}", path.display()))),
        (Ok(_), None) => w.finish().map(|_| ()).with_context(|| format!("cannot write {}", path.display())),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result.map(|_| 0)
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
