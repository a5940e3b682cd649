//! `kvmprof top`.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Result};
use clap::ValueEnum;
use profiler_daemon::analysis::report::GroupBy;
use profiler_daemon::top::{self, Mode, SortBy, TopOptions};

use super::record::SourceArg;
use super::symbols::GuestSymbolArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopGroupArg {
    /// One row per guest function (needs --vmlinux or --kallsyms).
    Function,
    /// One row per trap address (RIP) and reason.
    Rip,
    /// One row per exit reason.
    Reason,
    /// One row per I/O port and direction.
    Port,
    /// One row per vCPU thread.
    Vcpu,
}

impl From<TopGroupArg> for GroupBy {
    fn from(g: TopGroupArg) -> GroupBy {
        match g {
            TopGroupArg::Function => GroupBy::Function,
            TopGroupArg::Rip => GroupBy::Rip,
            TopGroupArg::Reason => GroupBy::Reason,
            TopGroupArg::Port => GroupBy::Port,
            TopGroupArg::Vcpu => GroupBy::Vcpu,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortArg {
    /// Exits per second.
    Count,
    /// Time in exits per second.
    Time,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  kvmprof top --pid 4242 --vmlinux vmlinux\n  \
kvmprof top --vmlinux guest.elf -- tinyvmm run --workload disk-write --count 3000 --disk disk.img\n  \
kvmprof top --by port --iterations 5 -- kvm-exit-loop --outs 20000 --outs-per-second 2000 | cat\n\n\
Every number is per second of the last interval (the difference of two snapshots of the in-kernel \
maps), not a total. Keys: f/r/p/v/i group by function/reason/port/vCPU/RIP, s sorts by exits/s or exit \
time/s, up/down move, Enter on a function shows its RIPs and callers (Esc back), q or Ctrl-C quits.\n\n\
Without a terminal on stdout (or with --batch) one plain table is printed per interval. A command \
started by top is stopped (SIGTERM) when top quits; in the terminal view its output goes to a \
log shown after the view closes if it fails. Without --pid or a command, every KVM guest on the \
host is traced. Needs root (eBPF).")]
pub struct TopArgs {
    /// Follow this running VMM process (QEMU, Firecracker, ...) instead of a command.
    #[arg(long, value_name = "PID", conflicts_with = "command")]
    pid: Option<u32>,
    /// Seconds between refreshes (at least 0.1).
    #[arg(long, value_name = "S", default_value_t = 1.0, allow_negative_numbers = true)]
    interval: f64,
    #[command(flatten)]
    symbols: GuestSymbolArgs,
    /// What one row stands for (default: function with symbols, else rip).
    #[arg(long, value_enum)]
    by: Option<TopGroupArg>,
    /// Order rows by exits/s (count) or exit time/s (time).
    #[arg(long, value_enum, default_value = "count")]
    sort: SortArg,
    /// Stop after N refreshes.
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    iterations: Option<u64>,
    /// Print plain tables even when stdout is a terminal (like `top -b`).
    #[arg(short, long)]
    batch: bool,
    /// Which tracepoints give the exits.
    #[arg(long, value_enum, default_value = "auto")]
    source: SourceArg,
    /// The VMM's guest memory map, for callers in a function's details (see `kvmprof record
    /// --help`); not needed for `-- tinyvmm run ...`.
    #[arg(long, value_name = "FILE")]
    guest_memory_map: Option<PathBuf>,
    /// The command to run and watch (after --).
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub fn run(a: TopArgs) -> Result<i32> {
    let interval = Duration::try_from_secs_f64(a.interval).map_err(|_| anyhow!("--interval must be a positive number of seconds, not {}", a.interval))?;
    let symbols = a.symbols.load((a.by == Some(TopGroupArg::Function)).then_some("--by function"))?;
    let by = match a.by {
        Some(g) => g.into(),
        None if symbols.is_some() => GroupBy::Function,
        None => GroupBy::Rip,
    };
    top::run(TopOptions {
        pid: a.pid,
        command: a.command,
        interval,
        by,
        sort: match a.sort {
            SortArg::Count => SortBy::Count,
            SortArg::Time => SortBy::Time,
        },
        iterations: a.iterations,
        source: a.source.resolve(),
        symbols,
        guest_memory_map: a.guest_memory_map,
        mode: if a.batch { Mode::Batch } else { Mode::Auto },
    })
}
