//! `report --by caller`: the paper's Table 3 — trap address, trap function, caller address,
//! caller function — from the callers the eBPF programs read at each exit.
//!
//! The caller address is the return address in the caller (where the trapping function
//! returns to), as read from the guest stack at `[RBP + 8]`. Its function is looked up at
//! `address - 1`, i.e. at the call instruction: a call that is the last instruction of a
//! function (a call to a `noreturn` function) returns to the first byte of the next one.
use std::fmt::Write as _;

use crate::recording::Exit;
use crate::report::{Report, Row};
use crate::text_table;

/// The function that made the call returning to `caller`.
pub fn caller_function(caller: u64, resolve: &dyn Fn(u64) -> Option<String>) -> Option<String> {
    if caller == profiler_common::UNKNOWN_CALLER {
        return None;
    }
    resolve(caller - 1)
}

/// The note every caller report carries: how many exits have no caller, and why that happens.
pub fn unknown_note(exits: &[Exit]) -> String {
    let total: u64 = exits.iter().map(|e| e.stats.count).sum();
    let unknown: u64 = exits.iter().filter(|e| e.key.caller == profiler_common::UNKNOWN_CALLER).map(|e| e.stats.count).sum();
    let pct = if total > 0 { 100.0 * unknown as f64 / total as f64 } else { 0.0 };
    let mut s = format!("{unknown} of {total} exits ({pct:.2}%) have an unknown caller ([unknown])");
    if unknown > 0 {
        s.push_str(
            ": no guest memory map for the VMM (record with --guest-memory-map, or run tinyvmm under kvmprof), \
             exits before the map was known, or a frame that could not be read (no frame pointer, page not present, \
             paging mode not walked)",
        );
    }
    s
}

/// Table 3 layout.
pub fn table(rep: &Report, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "source: {}  |  {} exits, {:.6} s in exits",
        crate::report::source_description(&rep.source),
        rep.total_exits,
        rep.total_time_ns as f64 / 1e9
    );
    let header = ["Trap address", "Trap function", "Caller address", "Caller function", "Count", "Time (s)", "Time %", "Reason", "Port"];
    let unknown = || "[unknown]".to_string();
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            let port = text_table::port(&r.port, r.direction);
            [
                r.rip.clone().unwrap_or_default(),
                r.function.clone().unwrap_or_else(unknown),
                r.caller_rip.clone().unwrap_or_else(unknown),
                r.caller_function.clone().unwrap_or_else(|| if r.caller_rip.is_some() { "?".into() } else { unknown() }),
                r.count.to_string(),
                format!("{:.6}", r.time_ns as f64 / 1e9),
                format!("{:.2}%", r.percent),
                r.reason.clone(),
                port,
            ]
        })
        .collect();
    s.push_str(&text_table::render(&header, &cells, 4..=6));
    if let Some(more) = text_table::more_rows(rows.len(), rep.rows.len()) {
        let _ = writeln!(s, "{more}");
    }
    for n in &rep.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}
