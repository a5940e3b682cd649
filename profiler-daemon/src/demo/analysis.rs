//! What the demo reads out of profiles: IDE register writes, timer exits, hot functions, callers.
use super::*;
use crate::model::{Direction, Exit};

fn is_ide_register_or_doorbell(port: u16) -> bool {
    (IDE_REG_FIRST..=IDE_REG_LAST).contains(&port) || port == DOORBELL_PORT
}

/// The profile restricted to IDE register writes and batched-PIO doorbells.
pub(super) fn ide_register_writes(rec: &Profile) -> Profile {
    rec.filtered(|e| matches!(e.access.port(), Some((Direction::Out, p)) if is_ide_register_or_doorbell(p)))
}

/// Cross-check: tinyvmm counts port exits per port, both directions together; so does this
/// sum over the recording.
pub(super) fn recorded_on_ide_ports(rec: &Profile) -> u64 {
    rec.exits.iter().filter(|e: &&Exit| e.access.port().is_some_and(|(_, p)| is_ide_register_or_doorbell(p))).map(|e| e.stats.count).sum()
}

pub(super) fn tinyvmm_on_ide_ports(stats: &RunStats) -> u64 {
    (IDE_REG_FIRST..=IDE_REG_LAST).chain([DOORBELL_PORT]).map(|p| stats.port_exits(p)).sum()
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

pub(super) fn hot_functions(rep: &report::Report, n: usize) -> Vec<HotFn> {
    rep.rows
        .iter()
        .take(n)
        .map(|r| HotFn {
            rip: r.rip.map(render::hex),
            function: r.function.clone(),
            reason: r.reason.to_string(),
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
pub(super) fn callers(rec: &Profile, resolve: &dyn Fn(u64) -> Option<String>) -> (Vec<CallerRow>, Option<String>) {
    let rep = report::build(rec, GroupBy::Caller, resolve);
    let rows: Vec<CallerRow> = rep
        .rows
        .iter()
        .filter_map(|r| {
            let c = r.caller.as_ref()?;
            Some(CallerRow {
                rip: r.rip.map(render::hex),
                function: r.function.clone(),
                caller_rip: Some(render::hex(c.rip?)),
                caller_function: c.function.clone(),
                count: r.count,
                time_ns: r.time_ns,
            })
        })
        .collect();
    let notes: Vec<String> = rep.notes.iter().map(render::report::note_text).collect();
    let note = if rows.is_empty() { Some(format!("no caller attribution in this recording ({})", notes.join("; "))) } else { notes.first().cloned() };
    (rows, note)
}
