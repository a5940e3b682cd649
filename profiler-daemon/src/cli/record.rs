//! `kvmprof record`.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Result};
use clap::ValueEnum;
use profiler_daemon::live::record::{self, RecordOptions};
use profiler_daemon::live::stacks::StackSetup;
use profiler_daemon::model::Source;

#[derive(Clone, Copy, ValueEnum)]
pub enum SourceArg {
    /// Pick by the loaded KVM vendor module (kvm_intel/kvm_amd: hw, else emulated).
    Auto,
    Hw,
    Emulated,
}

impl SourceArg {
    pub fn resolve(self) -> Option<Source> {
        match self {
            SourceArg::Auto => None,
            SourceArg::Hw => Some(Source::Hw),
            SourceArg::Emulated => Some(Source::Emulated),
        }
    }
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  kvmprof record -o disk.kvmprof -- tinyvmm run --workload disk-write\n  \
kvmprof record -o vm.kvmprof --pid 4242 --duration 30 --records\n  \
kvmprof record -o stacks.kvmprof --stack-depth 4 --vmlinux guest.elf -- tinyvmm run --workload disk-write\n\n\
Without --pid or a command, every KVM guest on the host is recorded until Ctrl-C or --duration. \
Needs root (eBPF). Mounts tracefs at /sys/kernel/tracing if it is not mounted.")]
pub struct RecordArgs {
    /// Where to write the recording.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Trace this running VMM process (a QEMU, Firecracker, ... PID) instead of a command.
    #[arg(long, value_name = "PID", conflicts_with = "command")]
    pid: Option<u32>,
    /// Stop after this many seconds (default: when the command or PID exits, or on Ctrl-C).
    #[arg(long, value_name = "S")]
    duration: Option<f64>,
    /// Also keep every exit, in order, with its start time and duration (costs more). The
    /// records go to FILE.records as they arrive (memory stays bounded however long the
    /// recording); records the kernel's ring buffer had no room for are counted per CPU and
    /// reported (`report` prints a note).
    #[arg(long)]
    records: bool,
    /// Size in bytes of the kernel ring buffer that carries --records to kvmprof: a power of
    /// two, at least the page size (4096). Default 16 MiB (16777216). Smaller loses records
    /// when the guest exits faster than kvmprof drains it (every 20 ms).
    #[arg(long, value_name = "BYTES", requires = "records", value_parser = parse_ring_bytes)]
    records_buffer: Option<u32>,
    /// Which tracepoints give the exits.
    #[arg(long, value_enum, default_value = "auto")]
    source: SourceArg,
    /// The VMM's guest memory map, for caller attribution (`report --by caller`): JSON
    /// {"pid":N,"regions":[{"guest_phys":"0x0","size":N,"host_virt":"0x7f.."}]}, as written by
    /// `tinyvmm run --memory-map FILE`. Not needed for `-- tinyvmm run ...` (kvmprof asks
    /// tinyvmm for it); with a command, kvmprof waits for the command to write it. Not needed
    /// for QEMU either: kvmprof finds its guest RAM in /proc/PID/maps (with QMP's layout when
    /// QEMU has `-qmp unix:PATH,server=on,wait=off`) and uses it only once QEMU's `-kernel`
    /// image is found there byte for byte; else callers are [unknown] and the recording says
    /// why. This FILE overrides both.
    #[arg(long, value_name = "FILE")]
    guest_memory_map: Option<PathBuf>,
    /// Run detection for `kvmprof advise`: an I/O exit at most this long after the previous
    /// one re-entered the guest extends its run (e.g. 50us, 2ms, 800ns; a plain number is µs).
    /// Default: 200us on the emulated source (PVM, where every guest instruction is emulated),
    /// 5us on hw.
    #[arg(long, value_name = "DURATION", value_parser = super::advise::parse_gap)]
    max_gap: Option<u64>,
    /// Walk the guest stack at each exit: N return addresses (1, the default: the caller only,
    /// read at [RBP+8], at no extra cost; at most 8). Above 1, frames come from the unwind table
    /// of --vmlinux (its ORC tables, else its .eh_frame/.debug_frame CFI), with the frame
    /// pointer where no rule covers an address; without --vmlinux, frame pointers only. See
    /// `report --by stack`.
    #[arg(long, value_name = "N", default_value_t = 1)]
    stack_depth: u32,
    /// The guest kernel ELF whose unwind table walks the stacks (--stack-depth above 1).
    #[arg(long, value_name = "ELF")]
    vmlinux: Option<PathBuf>,
    /// A copy of the guest's /proc/kallsyms: the KASLR slide for the unwind table, from its
    /// `_text` and --vmlinux's.
    #[arg(long, value_name = "FILE", requires = "vmlinux")]
    kallsyms: Option<PathBuf>,
    /// The guest's KASLR slide (runtime − link address) in hex for the unwind table, or `auto`:
    /// from --kallsyms when given, else found from the first exits (as `report --kaslr-offset
    /// auto` does; stacks start once it is found, and the report says after how many exits).
    /// Default: from --kallsyms when given, else 0.
    #[arg(long, value_name = "HEX|auto", requires = "vmlinux", allow_hyphen_values = true, value_parser = super::symbols::parse_slide)]
    kaslr_offset: Option<symbolizer::KaslrSlide>,
    /// The command to run and trace (after --).
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let page = 4096u32;
    match s.parse::<u32>() {
        Ok(n) if n >= page && n.is_power_of_two() => Ok(n),
        _ => Err(format!("{s} is not a ring buffer size: give a power of two of at least {page} bytes, e.g. 65536")),
    }
}

pub fn run(a: RecordArgs) -> Result<i32> {
    let duration = a
        .duration
        .map(|s| Duration::try_from_secs_f64(s).map_err(|_| anyhow!("--duration must be a positive number of seconds, not {s}")))
        .transpose()?;
    let stacks = stack_setup(&a)?;
    record::run(&RecordOptions {
        output: a.output,
        guest_memory_map: a.guest_memory_map,
        pid: a.pid,
        duration,
        records: a.records,
        records_buffer: a.records_buffer,
        source: a.source.resolve(),
        command: a.command,
        quiet: false,
        max_gap_ns: a.max_gap,
        stacks,
    })?;
    Ok(0)
}

/// `--stack-depth` with the unwind table of `--vmlinux`, moved by the slide the flags give.
fn stack_setup(a: &RecordArgs) -> Result<Option<StackSetup>> {
    use symbolizer::KaslrSlide;
    let slide = match (&a.vmlinux, &a.kallsyms, a.kaslr_offset.unwrap_or_default()) {
        (_, _, KaslrSlide::Offset(s)) => s,
        (Some(elf), Some(ks), _) => symbolizer::kaslr_offset_from_kallsyms(elf, ks)?,
        // The slide from the first exits: stacks start once it is found.
        (Some(elf), None, KaslrSlide::Auto) => return Ok(StackSetup::with_slide_from_exits(a.stack_depth, elf)?),
        (None, None, KaslrSlide::Auto) => {
            return Err(anyhow!("record --kaslr-offset auto needs --vmlinux ELF (the guest kernel whose slide is looked for)"))
        }
        _ => 0,
    };
    Ok(StackSetup::new(a.stack_depth, a.vmlinux.as_deref(), slide)?)
}
