//! `kvmprof diff BEFORE AFTER`: the paper's Table 4. Per trap address (RIP) or guest
//! function: exits before and after, the change and its %, and the same for exit time,
//! sorted by the absolute change in exits.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::json;

use crate::recording::Recording;
use crate::report::{self, GroupBy};
use crate::text_table;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffBy {
    /// One row per trap address (RIP) and exit reason.
    Rip,
    /// One row per guest function (needs --vmlinux or --kallsyms).
    Function,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    Table,
    Json,
}

/// One row: a RIP (or function) present in either recording.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DiffRow {
    pub rip: Option<String>,
    pub function: Option<String>,
    pub reason: String,
    /// The port when every exit of the row, before and after, was on one port.
    pub port: Option<String>,
    pub direction: Option<&'static str>,
    #[serde(flatten)]
    pub change: Change,
}

/// Exit count and time before and after, and their change: for one row, or for the totals.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Change {
    pub count_before: u64,
    pub count_after: u64,
    pub count_change: i64,
    /// `count_change / count_before` in %; `None` (JSON null) when there were none before.
    pub count_change_pct: Option<f64>,
    pub time_before_ns: u64,
    pub time_after_ns: u64,
    pub time_change_ns: i64,
    pub time_change_pct: Option<f64>,
}

impl Change {
    fn new(count: (u64, u64), time_ns: (u64, u64)) -> Change {
        let (cb, ca) = count;
        let (tb, ta) = time_ns;
        Change {
            count_before: cb,
            count_after: ca,
            count_change: change(cb, ca),
            count_change_pct: pct(cb, ca),
            time_before_ns: tb,
            time_after_ns: ta,
            time_change_ns: change(tb, ta),
            time_change_pct: pct(tb, ta),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Diff {
    pub by: DiffBy,
    pub source_before: String,
    pub source_after: String,
    pub totals: Change,
    pub rows: Vec<DiffRow>,
}

fn pct(before: u64, after: u64) -> Option<f64> {
    (before > 0).then(|| 100.0 * (after as f64 - before as f64) / before as f64)
}

fn change(before: u64, after: u64) -> i64 {
    after as i64 - before as i64
}

/// Compares two recordings. `resolve` names guest RIPs (the same symbols serve both: the
/// guest kernel did not change between the runs, only its configuration).
pub fn build(before: &Recording, after: &Recording, by: DiffBy, resolve: &dyn Fn(u64) -> Option<String>) -> Diff {
    let group = match by {
        DiffBy::Rip => GroupBy::Rip,
        DiffBy::Function => GroupBy::Function,
    };
    let rb = report::build(before, group, resolve);
    let ra = report::build(after, group, resolve);
    let key = |r: &report::Row| match by {
        DiffBy::Rip => format!("{}/{}", r.rip.as_deref().map(|s| format!("{:>18}", s)).unwrap_or_default(), r.reason),
        DiffBy::Function => r.function.clone().unwrap_or_else(|| format!("[unknown] {}", r.rip.as_deref().unwrap_or("?"))),
    };
    let mut joined: BTreeMap<String, (Option<&report::Row>, Option<&report::Row>)> = BTreeMap::new();
    for r in &rb.rows {
        joined.entry(key(r)).or_default().0 = Some(r);
    }
    for r in &ra.rows {
        joined.entry(key(r)).or_default().1 = Some(r);
    }
    let mut rows: Vec<DiffRow> = joined
        .into_values()
        .map(|(b, a)| {
            let any = b.or(a).expect("one side exists");
            let (cb, ca) = (b.map_or(0, |r| r.count), a.map_or(0, |r| r.count));
            let (tb, ta) = (b.map_or(0, |r| r.time_ns), a.map_or(0, |r| r.time_ns));
            // Port only when both sides agree (or one side is absent).
            let port = match (b, a) {
                (Some(b), Some(a)) if b.port != a.port || b.direction != a.direction => None,
                _ => any.port.clone().map(|p| (p, any.direction)),
            };
            let reason = match (b, a) {
                (Some(b), Some(a)) if b.reason != a.reason => "mixed".to_string(),
                _ => any.reason.clone(),
            };
            DiffRow {
                rip: match by {
                    DiffBy::Rip => any.rip.clone(),
                    // The hottest RIP of the function, after if it still exits, else before.
                    DiffBy::Function => a.or(b).and_then(|r| r.rip.clone()),
                },
                function: any.function.clone(),
                reason,
                port: port.as_ref().map(|(p, _)| p.clone()),
                direction: port.and_then(|(_, d)| d),
                change: Change::new((cb, ca), (tb, ta)),
            }
        })
        .collect();
    rows.sort_by(|x, y| {
        y.change.count_change
            .unsigned_abs()
            .cmp(&x.change.count_change.unsigned_abs())
            .then(y.change.time_change_ns.unsigned_abs().cmp(&x.change.time_change_ns.unsigned_abs()))
            .then(x.rip.cmp(&y.rip))
            .then(x.function.cmp(&y.function))
    });
    let (cb, ca, tb, ta) = (rb.total_exits, ra.total_exits, rb.total_time_ns, ra.total_time_ns);
    Diff {
        by,
        source_before: rb.source,
        source_after: ra.source,
        totals: Change::new((cb, ca), (tb, ta)),
        rows,
    }
}

fn fmt_pct(p: Option<f64>) -> String {
    match p {
        Some(p) => format!("{p:+.1}%"),
        None => "new".into(),
    }
}

fn secs(ns: u64) -> String {
    format!("{:.6}", ns as f64 / 1e9)
}

fn secs_signed(ns: i64) -> String {
    format!("{:+.6}", ns as f64 / 1e9)
}

impl Diff {
    pub fn render(&self, format: DiffFormat, top: Option<usize>) -> String {
        let rows = &self.rows[..top.unwrap_or(usize::MAX).min(self.rows.len())];
        match format {
            DiffFormat::Json => {
                let v = json!({
                    "by": format!("{:?}", self.by).to_lowercase(),
                    "source_before": self.source_before,
                    "source_after": self.source_after,
                    "totals": self.totals,
                    "rows": rows,
                });
                serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
            }
            DiffFormat::Table => self.table(rows),
        }
    }

    fn table(&self, rows: &[DiffRow]) -> String {
        let mut s = String::new();
        let t = &self.totals;
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
        if self.source_before != self.source_after {
            let _ = writeln!(s, "note: the recordings come from different exit sources ({} vs {})", self.source_before, self.source_after);
        }
        let first = if self.by == DiffBy::Rip { "Trap address" } else { "Function" };
        let header = [first, "Before", "After", "Change", "Change %", "Time before (s)", "Time after (s)", "Time change (s)", "Time %", "Reason", "Port", if self.by == DiffBy::Rip { "Function" } else { "Hottest RIP" }];
        let mut cells: Vec<Vec<String>> = Vec::new();
        for r in rows {
            let name = r.function.clone().unwrap_or_else(|| "[unknown]".into());
            let port = text_table::port(&r.port, r.direction);
            let first = if self.by == DiffBy::Rip { r.rip.clone().unwrap_or_default() } else { name.clone() };
            let last = if self.by == DiffBy::Rip { name } else { r.rip.clone().unwrap_or_else(|| "-".into()) };
            cells.push(vec![
                first,
                r.change.count_before.to_string(),
                r.change.count_after.to_string(),
                format!("{:+}", r.change.count_change),
                fmt_pct(r.change.count_change_pct),
                secs(r.change.time_before_ns),
                secs(r.change.time_after_ns),
                secs_signed(r.change.time_change_ns),
                fmt_pct(r.change.time_change_pct),
                r.reason.clone(),
                port,
                last,
            ]);
        }
        s.push_str(&text_table::render(&header, &cells, 1..=8));
        if let Some(more) = text_table::more_rows(rows.len(), self.rows.len()) {
            let _ = writeln!(s, "{more}");
        }
        s
    }
}
