//! A diff (the paper's Table 4) as a table or JSON.
use std::fmt::Write as _;

use serde::Serialize;

use super::{hex, port_cell, secs, table};
use crate::analysis::diff::{Change, Diff, DiffBy, DiffRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffFormat {
    Table,
    Json,
}

/// One row as `diff --format json` prints it (and the demo's `table4.rows`).
#[derive(Debug, Clone, Serialize)]
pub struct JsonDiffRow {
    pub rip: Option<String>,
    pub function: Option<String>,
    pub reason: String,
    pub port: Option<String>,
    pub direction: Option<&'static str>,
    #[serde(flatten)]
    pub change: Change,
}

impl JsonDiffRow {
    pub fn new(r: &DiffRow) -> JsonDiffRow {
        JsonDiffRow {
            rip: r.rip.map(hex),
            function: r.function.clone(),
            reason: r.reason.to_string(),
            port: r.port.map(|(_, p)| hex(p as u64)),
            direction: r.port.map(|(d, _)| d.name()),
            change: r.change.clone(),
        }
    }
}

#[derive(Serialize)]
struct JsonDiff<'a> {
    by: &'static str,
    source_before: &'static str,
    source_after: &'static str,
    totals: &'a Change,
    rows: Vec<JsonDiffRow>,
}

fn fmt_pct(p: Option<f64>) -> String {
    match p {
        Some(p) => format!("{p:+.1}%"),
        None => "new".into(),
    }
}

fn secs_signed(ns: i64) -> String {
    format!("{:+.6}", ns as f64 / 1e9)
}

pub fn render(d: &Diff, format: DiffFormat, top: Option<usize>) -> String {
    let rows = &d.rows[..top.unwrap_or(usize::MAX).min(d.rows.len())];
    match format {
        DiffFormat::Json => {
            let v = JsonDiff {
                by: d.by.name(),
                source_before: d.source_before.name(),
                source_after: d.source_after.name(),
                totals: &d.totals,
                rows: rows.iter().map(JsonDiffRow::new).collect(),
            };
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
        }
        DiffFormat::Table => table(d, rows),
    }
}

fn table(d: &Diff, rows: &[DiffRow]) -> String {
    let mut s = String::new();
    let t = &d.totals;
    let _ = writeln!(
        s,
        "exits: {} -> {} ({:+}, {})  |  time in exits: {} s -> {} s ({} s, {})",
        t.count_before,
        t.count_after,
        t.count_change,
        fmt_pct(t.count_change_pct),
        secs(t.time_before_ns),
        secs(t.time_after_ns),
        secs_signed(t.time_change_ns),
        fmt_pct(t.time_change_pct)
    );
    if d.source_before != d.source_after {
        let _ = writeln!(s, "note: the recordings come from different exit sources ({} vs {})", d.source_before, d.source_after);
    }
    let by_rip = d.by == DiffBy::Rip;
    let header = [
        if by_rip { "Trap address" } else { "Function" },
        "Before",
        "After",
        "Change",
        "Change %",
        "Time before (s)",
        "Time after (s)",
        "Time change (s)",
        "Time %",
        "Reason",
        "Port",
        if by_rip { "Function" } else { "Hottest RIP" },
    ];
    let mut cells: Vec<Vec<String>> = Vec::new();
    for r in rows {
        let name = r.function.clone().unwrap_or_else(|| "[unknown]".into());
        let rip = r.rip.map(hex);
        let (first, last) = if by_rip { (rip.unwrap_or_default(), name) } else { (name, rip.unwrap_or_else(|| "-".into())) };
        let c = &r.change;
        cells.push(vec![
            first,
            c.count_before.to_string(),
            c.count_after.to_string(),
            format!("{:+}", c.count_change),
            fmt_pct(c.count_change_pct),
            secs(c.time_before_ns),
            secs(c.time_after_ns),
            secs_signed(c.time_change_ns),
            fmt_pct(c.time_change_pct),
            r.reason.to_string(),
            port_cell(r.port),
            last,
        ]);
    }
    s.push_str(&table::render(&header, &cells, 1..=8));
    if let Some(more) = table::more_rows(rows.len(), d.rows.len()) {
        let _ = writeln!(s, "{more}");
    }
    s
}
