//! What the demo reads out of recordings: IDE register writes, timer exits, hot functions, callers.
use super::*;

pub(super) fn port_of(row: &crate::recording::ExitRow) -> Option<u64> {
    (row.detail_kind == "port_out" || row.detail_kind == "port_in").then(|| parse_hex(&row.detail)).flatten()
}

/// The recording restricted to IDE register writes and batched-PIO doorbells.
pub(super) fn ide_register_writes(rec: &Recording) -> Recording {
    let mut r = rec.clone();
    r.exits.retain(|e| {
        e.detail_kind == "port_out" && port_of(e).is_some_and(|p| (IDE_REG_FIRST..=IDE_REG_LAST).contains(&p) || p == DOORBELL_PORT)
    });
    r.records = None;
    r
}

pub(super) fn count_exits(rec: &Recording) -> u64 {
    rec.exits.iter().map(|e| e.count).sum()
}

pub(super) fn is_timer_function(f: &str) -> bool {
    let last = f.rsplit("::").next().unwrap_or(f);
    matches!(last, "timer_interrupt" | "ack_irq" | "timer_isr_entry" | "timer_workload")
}

pub(super) fn short_fn(f: &str) -> &str {
    // `tinyvmm_guest::ide::ide_do_rw_disk` -> `ide_do_rw_disk`; keeps `<T as W>::f` whole.
    if f.starts_with('<') {
        f
    } else {
        f.rsplit("::").next().unwrap_or(f)
    }
}

#[derive(Serialize)]
pub(super) struct HotFn {
    pub(super) rip: Option<String>,
    pub(super) function: Option<String>,
    pub(super) reason: String,
    pub(super) count: u64,
    pub(super) time_ns: u64,
    pub(super) percent: f64,
    pub(super) mean_ns: u64,
    p50_ns: u64,
    p99_ns: u64,
}

pub(super) fn hot_functions(rep: &report::Report, n: usize) -> Vec<HotFn> {
    rep.rows
        .iter()
        .take(n)
        .map(|r| HotFn {
            rip: r.rip.clone(),
            function: r.function.clone(),
            reason: r.reason.clone(),
            count: r.count,
            time_ns: r.time_ns,
            percent: r.percent,
            mean_ns: r.mean_ns,
            p50_ns: r.p50_ns,
            p99_ns: r.p99_ns,
        })
        .collect()
}

/// Table 3: exits by (RIP, caller), from the same code as `kvmprof report --by caller`.
/// Empty, with the reason, when the recording carries no caller attribution.
pub(super) fn callers(rec: &Recording, resolve: &dyn Fn(u64) -> Option<String>) -> (Vec<Value>, Option<String>) {
    let rep = report::build(rec, GroupBy::Caller, resolve);
    let rows: Vec<Value> = rep
        .rows
        .iter()
        .filter(|r| r.caller_rip.is_some())
        .map(|r| {
            json!({
                "rip": r.rip, "function": r.function, "caller_rip": r.caller_rip,
                "caller_function": r.caller_function, "count": r.count, "time_ns": r.time_ns,
            })
        })
        .collect();
    let note = if rows.is_empty() {
        Some(format!("no caller attribution in this recording ({})", rep.notes.join("; ")))
    } else {
        rep.notes.first().cloned()
    };
    (rows, note)
}
