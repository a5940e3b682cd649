//! The columns of `top`, as text: the same in the terminal view and in batch tables, so the
//! two cannot drift apart. Rates first (fixed width, right-aligned), then what the row is
//! (names can be long, so they come last).
use super::interval::{CallerRow, Interval};
use crate::analysis::report::{GroupBy, Row};
use crate::render::{hex, micros, port_cell};

/// The rate columns, shared by every grouping.
pub const RATES: [&str; 5] = ["Exits/s", "Time (ms/s)", "Mean (us)", "p99 (us)", "Time %"];

/// The columns that say what a row is.
pub fn key_header(by: GroupBy) -> &'static [&'static str] {
    match by {
        GroupBy::Function => &["Reason", "Port", "Function"],
        GroupBy::Rip => &["RIP", "Reason", "Port", "Function"],
        GroupBy::Reason => &["Reason"],
        GroupBy::Port => &["Port"],
        GroupBy::Vcpu => &["vCPU", "TID", "Thread"],
        GroupBy::Caller => &["RIP", "Caller"],
        GroupBy::Vm => &["PID", "VM"],
        GroupBy::Stack => &["RIP", "Function"],
    }
}

pub fn header(by: GroupBy) -> Vec<&'static str> {
    RATES.iter().chain(key_header(by)).copied().collect()
}

/// Exit time per second in milliseconds (of 1000 per CPU).
fn ms_per_s(iv: &Interval, ns: u64) -> String {
    format!("{:.3}", iv.rate(ns) / 1e6)
}

pub fn rate_cells(iv: &Interval, r: &Row) -> [String; 5] {
    [format!("{:.1}", iv.rate(r.count)), ms_per_s(iv, r.time_ns), micros(r.mean_ns), micros(r.p99_ns), format!("{:.2}%", r.percent)]
}

/// A function, or `[unknown]` as in `report` (no symbols, or none at this address).
fn function_cell(r: &Row, by: GroupBy) -> String {
    match (&r.function, r.rip) {
        (Some(f), _) => f.clone(),
        // Function rows without a symbol are one per RIP, and have no RIP column: name it.
        (None, Some(rip)) if by == GroupBy::Function => format!("[unknown] {}", hex(rip)),
        _ => "[unknown]".into(),
    }
}

pub fn key_cells(iv: &Interval, r: &Row, by: GroupBy) -> Vec<String> {
    let rip = || r.rip.map_or("-".into(), hex);
    match by {
        GroupBy::Function => vec![r.reason.to_string(), port_cell(r.port), function_cell(r, by)],
        GroupBy::Rip => vec![rip(), r.reason.to_string(), port_cell(r.port), function_cell(r, by)],
        GroupBy::Reason => vec![r.reason.to_string()],
        GroupBy::Port => vec![port_cell(r.port)],
        GroupBy::Vcpu => {
            let comm = r.tid.and_then(|t| iv.exits.threads.get(&t)).map_or("-".into(), |t| t.comm.clone());
            vec![r.vcpu.map_or("-".into(), |v| v.to_string()), r.tid.map_or("-".into(), |t| t.to_string()), comm]
        }
        GroupBy::Caller => vec![rip(), r.caller.as_ref().and_then(|c| c.function.clone()).unwrap_or_else(|| "[unknown]".into())],
        GroupBy::Stack => vec![rip(), function_cell(r, by)],
        GroupBy::Vm => {
            let (pid, name) = r.vm.as_ref().map_or(("-".into(), "-".into()), |(p, n)| (p.to_string(), n.clone().unwrap_or_else(|| "-".into())));
            vec![pid, name]
        }
    }
}

pub fn row_cells(iv: &Interval, r: &Row, by: GroupBy) -> Vec<String> {
    let mut cells = rate_cells(iv, r).to_vec();
    cells.extend(key_cells(iv, r, by));
    cells
}

/// What identifies a row from one refresh to the next (the selection follows it).
pub fn row_key(iv: &Interval, r: &Row, by: GroupBy) -> String {
    key_cells(iv, r, by).join("\u{1f}")
}

pub const CALLER_HEADER: [&str; 3] = ["Exits/s", "Time (ms/s)", "Caller"];

pub fn caller_cells(iv: &Interval, c: &CallerRow) -> Vec<String> {
    vec![format!("{:.1}", iv.rate(c.count)), ms_per_s(iv, c.time_ns), c.function.clone().unwrap_or_else(|| "[unknown]".into())]
}

/// The interval's totals on one line.
pub fn summary(iv: &Interval) -> String {
    format!(
        "source {} | {} VM{} | {:.0} exits/s | exit time {:.1}% of one CPU | drops {}",
        iv.exits.meta.source,
        iv.vms,
        if iv.vms == 1 { "" } else { "s" },
        iv.exits_per_s(),
        iv.cpu_percent(),
        iv.drops()
    )
}
