//! `kvmprof top`: a live view of VM exits by guest function (or RIP, reason, port, vCPU),
//! refreshed every interval from the difference of two [`Session::snapshot`]s, so every number
//! on screen is a per-interval rate, not a total since the start.
//!
//! - [`sampler`]: the session and its target (a command started for it, a PID, every VM), one
//!   [`Interval`] per call.
//! - [`delta`]: the exits of one interval from two cumulative snapshots.
//! - [`interval`]: one interval's numbers: rates, rows grouped and sorted, a function's RIPs and
//!   callers.
//! - [`tui`] + `view`: the terminal view (ratatui), when stdout is a terminal; [`batch`]: one
//!   plain table per interval otherwise (like `top -b`).
//!
//! [`Session::snapshot`]: crate::live::Session::snapshot
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use symbolizer::Symbolizer;

use crate::analysis::report::GroupBy;
use crate::model::Source;

pub mod batch;
mod columns;
mod command_output;
pub mod delta;
pub mod interval;
pub mod sampler;
pub mod tui;
mod view;

pub use interval::Interval;

/// What the rows are ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    /// Exits per second.
    Count,
    /// Exit time per second.
    Time,
}

impl SortBy {
    pub fn name(self) -> &'static str {
        match self {
            SortBy::Count => "exits/s",
            SortBy::Time => "exit time/s",
        }
    }

    pub fn toggled(self) -> SortBy {
        match self {
            SortBy::Count => SortBy::Time,
            SortBy::Time => SortBy::Count,
        }
    }
}

/// Terminal view or plain tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The terminal view when stdout is a terminal, plain tables otherwise.
    Auto,
    /// Plain tables even on a terminal (`top -b`).
    Batch,
}

/// `kvmprof top`'s options, as plain types (the CLI maps its flags onto these).
pub struct TopOptions {
    /// Follow this running VMM.
    pub pid: Option<u32>,
    /// Or start this command and follow it. Neither: every VM on the host.
    pub command: Vec<String>,
    pub interval: Duration,
    /// Rows by function, RIP, reason, port or vCPU (not caller: callers are in a function's
    /// details).
    pub by: GroupBy,
    pub sort: SortBy,
    /// Stop after this many intervals.
    pub iterations: Option<u64>,
    /// Exit source; `None` picks this host's.
    pub source: Option<Source>,
    /// Guest symbols: function rows and details need them.
    pub symbols: Option<Symbolizer>,
    /// The VMM's guest memory map, for callers (see `live::guest_memory`); tinyvmm commands
    /// hand theirs over without it.
    pub guest_memory_map: Option<PathBuf>,
    pub mode: Mode,
}

/// Shortest interval: a snapshot reads every per-CPU map entry, and rates over a few
/// milliseconds would be mostly noise.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Runs `top` until `q`/Ctrl-C, `iterations`, or the end of the command or PID; returns the
/// exit code.
pub fn run(opts: TopOptions) -> Result<i32> {
    check(&opts)?;
    let tui = opts.mode == Mode::Auto && std::io::stdout().is_terminal();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("cannot install the signal handler")?;
    }
    // Everything that can fail on bad input fails here, before the screen is taken over.
    let mut sampler = sampler::Sampler::start(&opts, tui)?;
    let shown = if tui { tui::run(&mut sampler, &opts, &stop) } else { batch::run(&mut sampler, &opts, &stop, &mut std::io::stdout()) };
    let end = sampler.finish();
    shown?;
    let end = end?;
    for line in end.notes() {
        eprintln!("kvmprof: {line}");
    }
    Ok(0)
}

/// Option combinations the library refuses, said in terms of the command line.
fn check(opts: &TopOptions) -> Result<()> {
    if opts.pid.is_some() && !opts.command.is_empty() {
        bail!("give either a PID or a command, not both");
    }
    if opts.interval < MIN_INTERVAL {
        bail!("--interval must be at least {} s", MIN_INTERVAL.as_secs_f64());
    }
    match opts.by {
        GroupBy::Function if opts.symbols.is_none() => {
            bail!("--by function needs the guest's symbols: add --vmlinux ELF or --kallsyms FILE")
        }
        GroupBy::Caller => bail!("top has no caller rows: press Enter on a function to see its callers"),
        GroupBy::Stack => bail!("top has no stack rows: record with `kvmprof record --stack-depth N` and use `report --by stack`"),
        _ => Ok(()),
    }
}
