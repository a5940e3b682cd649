//! The demo's "Batching advisor" section (paper §3.1.1, automated): `kvmprof advise` on the
//! unbatched disk-write recording, beside what `--batch-pio` measurably saved (Table 4).
use serde::Serialize;

use super::*;
use crate::analysis::advise::{self as adv, AdviseOptions, Candidate, Target};
use crate::render::advise::JsonCandidate;
use crate::render::plot::{BarChart, Series, BLUE, ORANGE};

/// `advise` in the demo JSON.
#[derive(Debug, Serialize)]
pub struct AdviseSection {
    /// What the two numbers count.
    pub definition: &'static str,
    pub max_gap_ns: u64,
    /// Exits saved predicted by `advise` for the runs `--batch-pio` merges: the register-write
    /// runs of `ide_do_rw_disk` (every access an `out` to 0x1f1–0x1f7).
    pub predicted_exits_saved: u64,
    /// Table 4's IDE register-write exits (out 0x1f1–0x1f7 + doorbell 0x510) before − after.
    pub measured_exits_saved: u64,
    /// 100 × (predicted − measured) / measured.
    pub error_pct: f64,
    pub predicted_time_saved_ns: u64,
    /// Exit time of `ide_do_rw_disk`'s register writes without `--batch-pio` minus that of
    /// its register writes and the doorbells (0x510) with it (negative if it grew). Only
    /// `ide_do_rw_disk`: Table 4's rows also hold `ide_flush`, whose one exit lasts the
    /// image's fsync (milliseconds, different in every run) and which batching does not touch.
    pub measured_time_saved_ns: i64,
    /// The best candidates of the unbatched run (`kvmprof advise --format json`, top 5).
    pub candidates: Vec<JsonCandidate>,
    pub exits_in_runs: u64,
    pub total_exits: u64,
}

pub const DEFINITION: &str = "predicted = sum of (run length - 1) x occurrences over advise's candidates in ide_do_rw_disk whose accesses are all out to 0x1f1-0x1f7 (the register writes --batch-pio queues); measured = Table 4's register-write exits (out 0x1f1-0x1f7, + doorbell 0x510) without --batch-pio minus with it; time: advise's time saved for those runs vs the exit time of ide_do_rw_disk's register writes before minus that of its register writes and the doorbells after";

fn is_rw_disk(f: Option<String>) -> bool {
    f.is_some_and(|f| f.rsplit("::").next() == Some("ide_do_rw_disk"))
}

fn is_register_write_run(c: &Candidate) -> bool {
    c.functions.len() == 1
        && c.functions[0].rsplit("::").next() == Some("ide_do_rw_disk")
        && c.accesses.iter().all(|a| a.direction == crate::model::Direction::Out && matches!(a.target, Target::Port(p) if (IDE_REG_FIRST..=IDE_REG_LAST).contains(&p)))
}

pub(super) fn advise_section(disk: &Profile, t4_before: &Profile, t4_after: &Profile, table4: &Table4, resolve: &dyn Fn(u64) -> Option<String>) -> Result<(AdviseSection, adv::Advice)> {
    let advice = adv::build(disk, AdviseOptions::default(), resolve)?;
    let regs: Vec<&Candidate> = advice.candidates.iter().filter(|c| is_register_write_run(c)).collect();
    let predicted: u64 = regs.iter().map(|c| c.exits_saved).sum();
    let measured = table4.before.saturating_sub(table4.after);
    let section = AdviseSection {
        definition: DEFINITION,
        max_gap_ns: advice.max_gap_ns,
        predicted_exits_saved: predicted,
        measured_exits_saved: measured,
        error_pct: if measured == 0 { 0.0 } else { 100.0 * (predicted as f64 - measured as f64) / measured as f64 },
        predicted_time_saved_ns: regs.iter().map(|c| c.time_saved_ns).sum(),
        measured_time_saved_ns: {
            let before: u64 = t4_before.exits.iter().filter(|e| is_rw_disk(resolve(e.rip))).map(|e| e.stats.total_ns).sum();
            let after: u64 = t4_after
                .exits
                .iter()
                .filter(|e| is_rw_disk(resolve(e.rip)) || e.access.port() == Some((crate::model::Direction::Out, DOORBELL_PORT)))
                .map(|e| e.stats.total_ns)
                .sum();
            before as i64 - after as i64
        },
        candidates: advice.candidates.iter().take(5).map(JsonCandidate::new).collect(),
        exits_in_runs: advice.exits_in_runs,
        total_exits: advice.total_exits,
    };
    Ok((section, advice))
}

pub(super) fn plot(a: &AdviseSection, n: &str) -> BarChart {
    BarChart {
        title: format!("Batching advisor: IDE register-write exits saved, {n} sectors"),
        x_label: "kvmprof advise on the unbatched run vs tinyvmm --batch-pio".into(),
        y_label: "VM exits saved".into(),
        categories: vec!["exits saved".into()],
        series: vec![
            Series { name: "predicted (advise)".into(), values: vec![a.predicted_exits_saved as f64], color: BLUE },
            Series { name: "measured (--batch-pio)".into(), values: vec![a.measured_exits_saved as f64], color: ORANGE },
        ],
        note: Some(format!(
            "time saved: predicted {:.3} ms, measured {:.3} ms; paper §3.1.1 merged ide_do_rw_disk's outb by hand",
            a.predicted_time_saved_ns as f64 / 1e6,
            a.measured_time_saved_ns as f64 / 1e6
        )),
    }
}

pub(super) fn render_text(s: &mut String, a: &AdviseSection, advice: &adv::Advice, source: crate::model::Source) {
    use std::fmt::Write as _;
    let _ = writeln!(s, "5. Batching advisor (paper §3.1.1, automated): kvmprof advise on the unbatched disk-write");
    let shown = adv::Advice { candidates: advice.candidates.iter().take(5).cloned().collect(), ..advice.clone() };
    for l in crate::render::advise::render(&shown, source, crate::render::advise::Format::Table, None, false).lines() {
        let _ = writeln!(s, "   {l}");
    }
    let _ = writeln!(
        s,
        "   predicted (ide_do_rw_disk register-write runs): {} exits, {:.6} s   measured with --batch-pio (Table 4): {} exits, {:.6} s   ({:+.1}% exits)\n   \
         (time measured: ide_do_rw_disk's register-write exit time before minus its register writes + doorbells after; a doorbell replays the queue, so it costs more than the mean exit advise prices it at)",
        a.predicted_exits_saved,
        a.predicted_time_saved_ns as f64 / 1e9,
        a.measured_exits_saved,
        a.measured_time_saved_ns as f64 / 1e9,
        a.error_pct
    );
    let _ = writeln!(s, "   paper: the authors found ide_do_rw_disk's successive outb by reading the driver and merged them by hand (Fig. 5 -> Fig. 6)");
    let _ = writeln!(s);
}
