//! `kvmprof diff BEFORE AFTER`: the paper's Table 4. Per trap address (RIP) or guest
//! function: exits before and after, the change and its %, and the same for exit time,
//! sorted by the absolute change in exits.
use std::collections::BTreeMap;

use serde::Serialize;

use super::report::{self, GroupBy, RowReason};
use crate::model::{Direction, Profile, Source};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffBy {
    /// One row per trap address (RIP) and exit reason.
    Rip,
    /// One row per guest function (needs guest symbols).
    Function,
}

impl DiffBy {
    pub fn name(self) -> &'static str {
        match self {
            DiffBy::Rip => "rip",
            DiffBy::Function => "function",
        }
    }
}

/// One row: a RIP (or function) present in either profile.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffRow {
    /// The RIP; for function rows the function's hottest RIP (after if it still exits).
    pub rip: Option<u64>,
    pub function: Option<String>,
    pub reason: RowReason,
    /// The port when every exit of the row, before and after, was on one port.
    pub port: Option<(Direction, u16)>,
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
    pub source_before: Source,
    pub source_after: Source,
    pub totals: Change,
    pub rows: Vec<DiffRow>,
}

fn pct(before: u64, after: u64) -> Option<f64> {
    (before > 0).then(|| 100.0 * (after as f64 - before as f64) / before as f64)
}

fn change(before: u64, after: u64) -> i64 {
    after as i64 - before as i64
}

/// What rows of the two reports are joined on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum JoinKey {
    Rip(Option<u64>, String),
    Function(String),
    UnknownFunction(Option<u64>),
}

/// Compares two profiles. `resolve` names guest RIPs (the same symbols serve both: the
/// guest kernel did not change between the runs, only its configuration).
pub fn build(before: &Profile, after: &Profile, by: DiffBy, resolve: &dyn Fn(u64) -> Option<String>) -> Diff {
    let group = match by {
        DiffBy::Rip => GroupBy::Rip,
        DiffBy::Function => GroupBy::Function,
    };
    let rb = report::build(before, group, resolve);
    let ra = report::build(after, group, resolve);
    let key = |r: &report::Row| match (by, &r.function) {
        (DiffBy::Rip, _) => JoinKey::Rip(r.rip, r.reason.to_string()),
        (DiffBy::Function, Some(f)) => JoinKey::Function(f.clone()),
        (DiffBy::Function, None) => JoinKey::UnknownFunction(r.rip),
    };
    let mut joined: BTreeMap<JoinKey, (Option<&report::Row>, Option<&report::Row>)> = BTreeMap::new();
    for r in &rb.rows {
        joined.entry(key(r)).or_default().0 = Some(r);
    }
    for r in &ra.rows {
        joined.entry(key(r)).or_default().1 = Some(r);
    }
    let mut rows: Vec<DiffRow> = joined
        .into_values()
        .filter_map(|(b, a)| {
            let any = b.or(a)?;
            let (cb, ca) = (b.map_or(0, |r| r.count), a.map_or(0, |r| r.count));
            let (tb, ta) = (b.map_or(0, |r| r.time_ns), a.map_or(0, |r| r.time_ns));
            // Port and reason only when both sides agree (or one side is absent).
            let (port, reason) = match (b, a) {
                (Some(b), Some(a)) => (
                    if b.port == a.port { b.port } else { None },
                    if b.reason == a.reason { b.reason } else { RowReason::Mixed },
                ),
                _ => (any.port, any.reason),
            };
            Some(DiffRow {
                rip: match by {
                    DiffBy::Rip => any.rip,
                    DiffBy::Function => a.or(b).and_then(|r| r.rip),
                },
                function: any.function.clone(),
                reason,
                port,
                change: Change::new((cb, ca), (tb, ta)),
            })
        })
        .collect();
    rows.sort_by(|x, y| {
        y.change
            .count_change
            .unsigned_abs()
            .cmp(&x.change.count_change.unsigned_abs())
            .then(y.change.time_change_ns.unsigned_abs().cmp(&x.change.time_change_ns.unsigned_abs()))
            .then(x.rip.cmp(&y.rip))
            .then(x.function.cmp(&y.function))
    });
    Diff {
        by,
        source_before: rb.source,
        source_after: ra.source,
        totals: Change::new((rb.total_exits, ra.total_exits), (rb.total_time_ns, ra.total_time_ns)),
        rows,
    }
}
