//! Without a terminal (piped, or `--batch`): one plain table per interval on stdout, like
//! `top -b`, for scripts and logs. Each table is a summary line, the column header, one line
//! per row (all rows), and a blank line:
//!
//! ```text
//! kvmprof top: interval 2, 1.000 s, t=2.0 s | source emulated | 1 VM | 2000 exits/s | exit time 1.9% of one CPU | drops 0
//! Exits/s  Time (ms/s)  Mean (us)  p99 (us)   Time %  Port
//!  2000.0       19.123       9.56     11.59  100.00%  out 0x80
//! ```
//!
//! It stops after `iterations` tables, on SIGINT/SIGTERM, or when the command or PID ends
//! (then the last, partial interval is printed too, marked `(last)`).
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::interval::Resolve;
use super::sampler::Sampler;
use super::{columns, Interval, SortBy, TopOptions};
use crate::analysis::report::GroupBy;
use crate::render::table;

/// How often the session is serviced between samples (see `Session::poll`).
const TICK: Duration = Duration::from_millis(20);

pub fn run(sampler: &mut Sampler, opts: &TopOptions, stop: &AtomicBool, out: &mut dyn Write) -> Result<()> {
    let resolve = |rip: u64| opts.symbols.as_ref().and_then(|s| s.function_name(rip));
    let mut due = sampler.started() + opts.interval;
    loop {
        let ended = sampler.poll();
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if ended.is_some() {
            let iv = sampler.sample_last()?;
            emit(out, &render(&iv, opts.by, opts.sort, &resolve, true))?;
            return Ok(());
        }
        let now = Instant::now();
        if now >= due {
            let iv = sampler.sample()?;
            if !emit(out, &render(&iv, opts.by, opts.sort, &resolve, false))? {
                return Ok(());
            }
            if opts.iterations.is_some_and(|n| iv.index >= n) {
                return Ok(());
            }
            // Deadlines on a fixed grid, so intervals do not drift; one missed (a slow
            // snapshot) is skipped rather than sampled twice in a row.
            due += opts.interval;
            if due <= now {
                due = now + opts.interval;
            }
        }
        std::thread::sleep(TICK.min(due.saturating_duration_since(Instant::now())));
    }
}

/// Writes one table; `false` if stdout was closed (`| head`), which ends `top` quietly.
fn emit(out: &mut dyn Write, text: &str) -> Result<bool> {
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        r => r.map(|_| true).context("writing the output"),
    }
}

/// One interval as a plain table.
pub fn render(iv: &Interval, by: GroupBy, sort: SortBy, resolve: Resolve, last: bool) -> String {
    let rows: Vec<Vec<String>> = iv.rows(by, sort, resolve).iter().map(|r| columns::row_cells(iv, r, by)).collect();
    let mut s = format!(
        "kvmprof top: interval {}{}, {:.3} s, t={:.1} s | {}\n",
        iv.index,
        if last { " (last)" } else { "" },
        iv.secs,
        iv.at_secs,
        columns::summary(iv)
    );
    s.push_str(&table::render(&columns::header(by), &rows, 0..=columns::RATES.len() - 1));
    if rows.is_empty() {
        s.push_str("(no exits)\n");
    }
    s.push('\n');
    s
}
