//! `kvmprof`: the command line. Each subcommand is a thin layer over the library.
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use profiler_daemon::demo::{self, DemoOptions};
use profiler_daemon::diff::{self, DiffBy, DiffFormat};
use profiler_daemon::flame;
use profiler_daemon::import::{self, TextFormat};
use profiler_daemon::record::{self, RecordOptions};
use profiler_daemon::recording::Recording;
use profiler_daemon::report::{self, Format, GroupBy};
use profiler_daemon::symbolize_cmd::{self, SymbolizeArgs};
use profiler_daemon::tracefs;
use profiler_daemon::tracer::{self, Source};

#[derive(Parser)]
#[command(
    name = "kvmprof",
    version,
    about = "Which guest functions cause your VM exits, and what do those exits cost?",
    long_about = "kvmprof records every VM exit of a KVM guest with eBPF on the KVM tracepoints, \
aggregates them in the kernel by (vCPU thread, reason, guest RIP, port), and prints the hot-exit \
tables of Zhang et al., \"Evaluating and Optimizing I/O Virtualization in KVM\".\n\n\
Typical use:\n  sudo kvmprof record -o run.kvmprof -- qemu-system-x86_64 -enable-kvm ...\n  \
sudo kvmprof record -o run.kvmprof --pid $(pidof qemu-system-x86_64) --duration 10\n  \
kvmprof report run.kvmprof --by rip\n\n\
Exit sources: `hw` (kvm_exit/kvm_entry, VMX/SVM hosts) and `emulated` (hosts where kvm_exit \
never fires, e.g. PVM: the RIP is read from the instruction emulator at each exit, as kvm_emulate_insn \
reports it). The source is detected and named \
in every report."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Record the VM exits of a command, a running VM (--pid), or every VM on the host.
    Record(RecordArgs),
    /// Print the hot-exit tables of a recording.
    Report(ReportArgs),
    /// Map guest addresses to function+offset, file:line and inlined frames.
    Symbolize(SymbolizeArgs),
    /// Convert recorded KVM tracepoint text (perf script, ftrace) into a recording.
    Import(ImportArgs),
    /// Load and attach the eBPF programs, then detach: checks that kvmprof can trace here.
    Check(CheckArgs),
    /// Compare two recordings per RIP or function: the paper's Table 4 (before/after).
    Diff(DiffArgs),
    /// Run tinyvmm's bundled guest under the profiler and print the paper's comparisons.
    Demo(DemoArgs),
}

#[derive(Args)]
#[command(after_help = "Examples:\n  kvmprof diff unbatched.kvmprof batched.kvmprof\n  \
kvmprof diff before.kvmprof after.kvmprof --vmlinux guest.elf --by function\n  \
kvmprof diff before.kvmprof after.kvmprof --vmlinux guest.elf --format json --top 20\n\n\
Each row: exits before and after, the change and its % (\"new\" when there were none \
before), and the same for the time spent in those exits; rows are sorted by the absolute \
change in exits. Both recordings are named with the same guest symbols.")]
struct DiffArgs {
    /// The recording before the change (e.g. without --batch-pio).
    before: PathBuf,
    /// The recording after the change.
    after: PathBuf,
    /// What one row stands for.
    #[arg(long, value_enum, default_value = "rip")]
    by: DiffBy,
    #[command(flatten)]
    symbols: GuestSymbols,
    /// Show only the N rows with the largest change (default: 25 for tables, all for JSON).
    #[arg(long, value_name = "N")]
    top: Option<usize>,
    #[arg(long, value_enum, default_value = "table")]
    format: DiffFormat,
}

#[derive(Args)]
#[command(after_help = "Example:\n  sudo kvmprof demo\n  sudo kvmprof demo --json --out /tmp/kvmprof-demo > demo.json\n\n\
Runs tinyvmm (found next to kvmprof, or --tinyvmm) eight times under the profiler, about a \
minute in all, and prints: 1. the hot guest functions of a disk workload (Tables 1-3, with \
callers when available); 2. Table 4: IDE register-write exits without and with --batch-pio, \
disk images compared; 3. Fig. 7: timer exits at 1000 Hz vs --pit-hz 100; 4. Fig. 8: boot \
with and without verify_pmtmr_rate. Recordings, disk images, the guest ELF, SVG plots and \
a flame graph are kept in --out. Needs root (eBPF) and /dev/kvm.")]
struct DemoArgs {
    /// Print the results as one JSON object (documented in docs/demo.md) instead of tables.
    #[arg(long)]
    json: bool,
    /// Work directory for recordings, disk images, the guest ELF and the SVG plots.
    #[arg(long, value_name = "DIR", default_value = "kvmprof-demo")]
    out: PathBuf,
    /// The tinyvmm binary (default: next to this kvmprof).
    #[arg(long, value_name = "PATH")]
    tinyvmm: Option<PathBuf>,
    /// Sectors written by each disk run.
    #[arg(long, value_name = "N", default_value_t = 100)]
    sectors: u64,
    /// Guest seconds of each timer run.
    #[arg(long, value_name = "S", default_value_t = 2)]
    timer_seconds: u64,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum SourceArg {
    /// Pick by the loaded KVM vendor module (kvm_intel/kvm_amd: hw, else emulated).
    Auto,
    Hw,
    Emulated,
}

impl SourceArg {
    fn resolve(self) -> Option<Source> {
        match self {
            SourceArg::Auto => None,
            SourceArg::Hw => Some(Source::Hw),
            SourceArg::Emulated => Some(Source::Emulated),
        }
    }
}

#[derive(Args)]
#[command(after_help = "Examples:\n  kvmprof record -o disk.kvmprof -- tinyvmm run --workload disk-write\n  \
kvmprof record -o vm.kvmprof --pid 4242 --duration 30 --records\n\n\
Needs root (eBPF). Mounts tracefs at /sys/kernel/tracing if it is not mounted.")]
struct RecordArgs {
    /// Where to write the recording.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Trace this running VMM process (a QEMU, Firecracker, ... PID) instead of a command.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Stop after this many seconds (default: when the command or PID exits, or on Ctrl-C).
    #[arg(long, value_name = "S")]
    duration: Option<f64>,
    /// Also keep every exit, in order, with its start time and duration (costs more).
    #[arg(long)]
    records: bool,
    /// Which tracepoints give the exits.
    #[arg(long, value_enum, default_value = "auto")]
    source: SourceArg,
    /// The VMM's guest memory map, for caller attribution (`report --by caller`): JSON
    /// {"pid":N,"regions":[{"guest_phys":"0x0","size":N,"host_virt":"0x7f.."}]}, as written by
    /// `tinyvmm run --memory-map FILE`. Not needed for `-- tinyvmm run ...` (kvmprof asks
    /// tinyvmm for it); with a command, kvmprof waits for the command to write it.
    #[arg(long, value_name = "FILE")]
    guest_memory_map: Option<PathBuf>,
    /// The command to run and trace (after --).
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  kvmprof report run.kvmprof\n  \
kvmprof report run.kvmprof --vmlinux vmlinux --by function\n  \
kvmprof report run.kvmprof --kallsyms guest-kallsyms.txt --by rip --format json --top 10\n  \
kvmprof report run.kvmprof --by port --format csv\n\n\
Guest functions: give the guest kernel's vmlinux (with DWARF for file:line), or a copy of the \
guest's /proc/kallsyms. A KASLR guest needs --kaslr-offset HEX, or `auto` with both files.")]
struct ReportArgs {
    /// A recording from `kvmprof record` or `kvmprof import`.
    file: PathBuf,
    #[command(flatten)]
    symbols: GuestSymbols,
    /// What one row stands for.
    #[arg(long, value_enum, default_value = "rip")]
    by: GroupBy,
    /// Show only the N rows with the most exits (default: 25 for tables, all otherwise).
    #[arg(long, value_name = "N")]
    top: Option<usize>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Also write a flame graph of the exits (stack caller;function;reason) to FILE as SVG.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  perf record -e 'kvm:*' -a -- sleep 5 && perf script > kvm.txt\n  \
kvmprof import perf-script kvm.txt -o kvm.kvmprof\n  \
kvmprof import ftrace /sys/kernel/tracing/trace -o kvm.kvmprof")]
struct ImportArgs {
    #[arg(value_enum)]
    format: TextFormat,
    /// The text file ("-" for standard input).
    file: PathBuf,
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

/// Where guest function names come from (report, diff).
#[derive(Args)]
struct GuestSymbols {
    /// The guest kernel ELF (vmlinux) to name guest functions with.
    #[arg(long, value_name = "ELF")]
    vmlinux: Option<PathBuf>,
    /// A copy of the guest's /proc/kallsyms (read as root inside the guest).
    #[arg(long, value_name = "FILE")]
    kallsyms: Option<PathBuf>,
    /// Guest KASLR slide (runtime − link address), or `auto` with --vmlinux and --kallsyms.
    #[arg(long, value_name = "HEX|auto", allow_hyphen_values = true)]
    kaslr_offset: Option<String>,
}

impl GuestSymbols {
    /// The symbolizer, if symbols were given; `required_by` names an option that needs them.
    fn load(&self, required_by: Option<&str>) -> Result<Option<symbolizer::Symbolizer>> {
        let sym = symbolize_cmd::load_symbolizer(self.vmlinux.as_deref(), self.kallsyms.as_deref(), self.kaslr_offset.as_deref())?;
        if let (None, Some(option)) = (&sym, required_by) {
            anyhow::bail!("{option} needs the guest's symbols: add --vmlinux ELF or --kallsyms FILE");
        }
        Ok(sym)
    }
}

#[derive(Args)]
struct CheckArgs {
    /// Which program set to load and attach ("all" checks both).
    #[arg(long, default_value = "all", value_parser = ["all", "hw", "emulated"])]
    source: String,
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvmprof: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Record(a) => record::run_with_map(&RecordOptions {
            output: a.output,
            pid: a.pid,
            duration: a
                .duration
                .map(|s| Duration::try_from_secs_f64(s).map_err(|_| anyhow::anyhow!("--duration must be a positive number of seconds, not {s}")))
                .transpose()?,
            records: a.records,
            source: a.source.resolve(),
            command: a.command,
            quiet: false,
        }, a.guest_memory_map.as_deref()),
        Cmd::Report(a) => {
            let rec = Recording::load(&a.file)?;
            let sym = a.symbols.load((a.by == GroupBy::Function).then_some("--by function"))?;
            let resolve = |rip: u64| sym.as_ref().and_then(|s| s.function_name(rip));
            let rep = report::build(&rec, a.by, &resolve);
            let top = a.top.or((a.format == Format::Table).then_some(25));
            if let Some(path) = &a.svg {
                let title = format!("VM exits of {}", a.file.display());
                flame::write_svg(&rep.render(Format::Folded, None), &title, path)?;
            }
            emit(&rep.render(a.format, top))
        }
        Cmd::Diff(a) => {
            let before = Recording::load(&a.before)?;
            let after = Recording::load(&a.after)?;
            let sym = a.symbols.load((a.by == DiffBy::Function).then_some("--by function"))?;
            let resolve = |rip: u64| sym.as_ref().and_then(|s| s.function_name(rip));
            let d = diff::build(&before, &after, a.by, &resolve);
            let top = a.top.or((a.format == DiffFormat::Table).then_some(25));
            emit(&d.render(a.format, top))
        }
        Cmd::Demo(a) => {
            let res = demo::run(&DemoOptions {
                out: a.out,
                tinyvmm: a.tinyvmm,
                sectors: a.sectors,
                timer_seconds: a.timer_seconds,
                progress: !a.quiet,
            })?;
            if a.json {
                emit(&(serde_json::to_string_pretty(&res.json)? + "\n"))
            } else {
                emit(&res.text)
            }
        }
        Cmd::Symbolize(a) => symbolize_cmd::run(&a).map(|_| 0),
        Cmd::Import(a) => {
            let reader: Box<dyn std::io::BufRead> = if a.file.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                let f = std::fs::File::open(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
                Box::new(std::io::BufReader::new(f))
            };
            let imported = import::import(reader, a.format)?;
            imported.recording.save(&a.output)?;
            let exits: u64 = imported.recording.exits.iter().map(|e| e.count).sum();
            eprintln!(
                "kvmprof: imported {exits} exits (source {}) from {} events in {} lines ({} lines not understood) -> {}",
                imported.recording.meta.source,
                imported.events,
                imported.lines,
                imported.skipped,
                a.output.display()
            );
            Ok(0)
        }
        Cmd::Check(a) => {
            tracer::require_root("check")?;
            let tfs = tracefs::ensure_mounted()?;
            let sources = match a.source.as_str() {
                "hw" => vec![Source::Hw],
                "emulated" => vec![Source::Emulated],
                _ => vec![Source::Hw, Source::Emulated],
            };
            for s in sources {
                tracer::check_attach(&tfs, s)?;
                println!("{}: loaded and attached to {}", s.name(), s.attach_points().join(", "));
            }
            println!("detected source on this host: {}", Source::detect().name());
            Ok(0)
        }
    }
}

/// Prints to stdout; a closed pipe (`| head`) is not an error.
fn emit(text: &str) -> Result<i32> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        r => r.map(|_| 0).context("writing the report"),
    }
}
