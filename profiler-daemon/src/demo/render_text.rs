//! The demo's text output: the four comparisons beside the paper's figures.
use std::fmt::Write as _;

use super::*;
use crate::render::diff::DiffFormat;

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

/// The header line of the demo's text.
pub(super) fn header(s: &mut String, j: &DemoResult) {
    let _ = writeln!(s, "kvmprof demo: Zhang et al., \"Evaluating and Optimizing I/O Virtualization in KVM\", measured here");
    let _ = writeln!(s, "exit source: {}  |  kernel {}  |  work files: {}", j.source.description(), j.kernel, j.work_dir);
    let _ = writeln!(s);
}

/// The list of plots that ends the demo's text.
pub(super) fn plots(s: &mut String, j: &DemoResult) {
    let _ = writeln!(s, "plots:");
    for v in j.plots.values() {
        let _ = writeln!(s, "   {v}");
    }
}

/// Sections 1–4.
pub(super) fn render(j: &DiskResult, hot: &report::Report, t4: &diff::Diff, opts: &DemoOptions) -> String {
    let mut s = String::new();
    let n = opts.sectors;

    let _ = writeln!(s, "1. Hot functions (paper Tables 1-3): tinyvmm disk-write, {n} sectors, default boot");
    let top = report::Report { rows: hot.rows.iter().take(8).cloned().collect(), notes: vec![], ..hot.clone() };
    for l in render::report::render(&top, Format::Table, None).lines() {
        let _ = writeln!(s, "   {l}");
    }
    let _ = writeln!(
        s,
        "   paper: {} lead its tables; ide_do_rw_disk issues {} outb per command",
        paper::HOT_FUNCTIONS.join(", "),
        paper::IDE_OUTB_PER_COMMAND
    );
    if j.callers.is_empty() {
        let _ = writeln!(s, "   callers (Table 3): {}", j.callers_note.as_deref().unwrap_or("none recorded"));
    } else {
        let _ = writeln!(s, "   callers (Table 3): exits by function and the guest function that called it");
        // Rows are per (RIP, caller); merge to (function, caller function) for reading.
        let mut merged: Vec<(String, String, u64)> = Vec::new();
        for r in &j.callers {
            let f = short_fn(r.function.as_deref().unwrap_or("?")).to_string();
            let cf = r.caller_function.as_deref().map(short_fn).or(r.caller_rip.as_deref()).unwrap_or("?").to_string();
            match merged.iter_mut().find(|m| m.0 == f && m.1 == cf) {
                Some(m) => m.2 += r.count,
                None => merged.push((f, cf, r.count)),
            }
        }
        merged.sort_by_key(|m| std::cmp::Reverse(m.2));
        for (f, cf, n) in merged.iter().take(6) {
            let _ = writeln!(s, "     {n:>8}  {f} <- {cf}");
        }
    }
    let _ = writeln!(s);

    let t = &j.table4;
    let _ = writeln!(s, "2. Table 4: IDE register-write exits (out 0x1f1-0x1f7; after: + the 0x510 doorbell that replaces them), {n} sectors");
    for l in render::diff::render(t4, DiffFormat::Table, Some(16)).lines() {
        let _ = writeln!(s, "   {l}");
    }
    let _ = writeln!(
        s,
        "   ours: {} -> {} exits ({:.1}% fewer)   paper: {:.0}% fewer",
        t.before,
        t.after,
        t.reduction_pct,
        paper::TABLE4_EXIT_REDUCTION_PCT
    );
    let c = &t.cross_check;
    let _ = writeln!(
        s,
        "   cross-check, all exits on these ports (in+out): recorded {} -> {}, tinyvmm counted {} -> {}",
        c.recorded_before, c.recorded_after, c.tinyvmm_before, c.tinyvmm_after
    );
    let _ = writeln!(
        s,
        "   disk images identical: {}   guest checksums equal: {}   all exits {} -> {}   guest-measured {} -> {} sectors/s",
        yes_no(t.images_identical),
        yes_no(t.checksums_equal),
        t.exits_total_before,
        t.exits_total_after,
        t.sectors_per_s_before,
        t.sectors_per_s_after
    );
    let _ = writeln!(s);

    let tm = &j.timer;
    let _ = writeln!(
        s,
        "3. Fig. 7: disk writes with the guest timer on, 1000 Hz vs --pit-hz 100 (timer-disk, {} sectors)",
        tm.sectors
    );
    let _ = writeln!(s, "   {:<10} {:>12} {:>14} {:>14} {:>8} {:>10} {:>16}", "rate", "timer exits", "exit time (s)", "tinyvmm count", "ticks", "I/O (s)", "guest sectors/s");
    for (name, v) in [("1000 Hz", &tm.hz1000), ("100 Hz", &tm.hz100)] {
        let _ = writeln!(
            s,
            "   {:<10} {:>12} {:>14.6} {:>14} {:>8} {:>10.3} {:>16.1}",
            name,
            v.timer_exits,
            v.timer_exit_time_ns as f64 / 1e9,
            v.tinyvmm_timer_exits,
            v.ticks,
            v.io_s,
            v.sectors_per_s
        );
    }
    let _ = writeln!(
        s,
        "   ours: {:.1}x fewer timer-related exits, {:+.1}% disk write throughput   paper: up to +{:.0}% I/O throughput",
        tm.timer_exit_reduction_factor,
        tm.throughput_gain_pct,
        paper::FIG7_MAX_IO_GAIN_PCT
    );
    let _ = writeln!(
        s,
        "   (timer exits = recorded exits in timer_interrupt, ack_irq, timer_isr_entry; tinyvmm count = EOI writes + interrupt windows; sectors/s by the guest's PM timer over its I/O phase; disk images identical: {})",
        yes_no(tm.images_identical)
    );
    let _ = writeln!(s);

    let p = &j.pmtmr;
    let _ = writeln!(s, "4. Fig. 8 / Table 3: boot with the PM-timer calibration (verify_pmtmr_rate) on and off");
    let _ = writeln!(s, "   {:<16} {:>8} {:>26} {:>10}  top function", "calibration", "exits", "exits in verify_pmtmr_rate", "boot (ms)");
    for (name, v) in [("on", &p.on), ("off", &p.off)] {
        let _ = writeln!(
            s,
            "   {:<16} {:>8} {:>26} {:>10.1}  {}",
            name,
            v.exits,
            v.verify_pmtmr_rate_exits,
            v.boot_ms,
            v.top_function.as_deref().map(short_fn).unwrap_or("-")
        );
    }
    let _ = writeln!(s, "   paper: verify_pmtmr_rate's PM-timer reads are redundant boot-time exits; removing them removes the exits");
    let _ = writeln!(s);
    s
}
