//! The demo's text output: the four comparisons beside the paper's figures.
use super::*;

pub(super) fn render_text(s: &mut String, j: &Value, hot: &report::Report, t4: &diff::Diff, opts: &DemoOptions) {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let n = opts.sectors;
    let _ = writeln!(s, "kvmprof demo: Zhang et al., \"Evaluating and Optimizing I/O Virtualization in KVM\", measured here");
    let _ = writeln!(s, "exit source: {}  |  kernel {}  |  work files: {}", report::source_description(j["source"].as_str().unwrap_or("")), j["kernel"].as_str().unwrap_or("?"), j["work_dir"].as_str().unwrap_or("?"));
    let _ = writeln!(s);

    let _ = writeln!(s, "1. Hot functions (paper Tables 1-3): tinyvmm disk-write, {n} sectors, default boot");
    let mut top = report::Report { source: hot.source.clone(), by: hot.by, total_exits: hot.total_exits, total_time_ns: hot.total_time_ns, rows: hot.rows.clone(), notes: vec![] };
    top.rows.truncate(8);
    for l in top.render(Format::Table, None).lines() {
        let _ = writeln!(s, "   {l}");
    }
    let _ = writeln!(
        s,
        "   paper: {} lead its tables; ide_do_rw_disk issues {} outb per command",
        paper::HOT_FUNCTIONS.join(", "),
        paper::IDE_OUTB_PER_COMMAND
    );
    match j["callers"].as_array() {
        Some(c) if !c.is_empty() => {
            let _ = writeln!(s, "   callers (Table 3): exits by function and the guest function that called it");
            // Rows are per (RIP, caller); merge to (function, caller function) for reading.
            let mut merged: Vec<(String, String, u64)> = Vec::new();
            for r in c {
                let f = short_fn(r["function"].as_str().unwrap_or("?")).to_string();
                let cf = r["caller_function"].as_str().map(short_fn).or(r["caller_rip"].as_str()).unwrap_or("?").to_string();
                match merged.iter_mut().find(|m| m.0 == f && m.1 == cf) {
                    Some(m) => m.2 += u(&r["count"]),
                    None => merged.push((f, cf, u(&r["count"]))),
                }
            }
            merged.sort_by(|a, b| b.2.cmp(&a.2));
            for (f, cf, n) in merged.iter().take(6) {
                let _ = writeln!(s, "     {n:>8}  {f} <- {cf}");
            }
        }
        _ => {
            let _ = writeln!(s, "   callers (Table 3): {}", j["callers_note"].as_str().unwrap_or("none recorded"));
        }
    }
    let _ = writeln!(s);

    let t = &j["table4"];
    let _ = writeln!(s, "2. Table 4: IDE register-write exits (out 0x1f1-0x1f7; after: + the 0x510 doorbell that replaces them), {n} sectors");
    for l in t4.render(DiffFormat::Table, Some(16)).lines() {
        let _ = writeln!(s, "   {l}");
    }
    let _ = writeln!(
        s,
        "   ours: {} -> {} exits ({:.1}% fewer)   paper: {:.0}% fewer",
        u(&t["before"]),
        u(&t["after"]),
        f(&t["reduction_pct"]),
        paper::TABLE4_EXIT_REDUCTION_PCT
    );
    let c = &t["cross_check"];
    let _ = writeln!(
        s,
        "   cross-check, all exits on these ports (in+out): recorded {} -> {}, tinyvmm counted {} -> {}",
        u(&c["recorded_before"]),
        u(&c["recorded_after"]),
        u(&c["tinyvmm_before"]),
        u(&c["tinyvmm_after"])
    );
    let _ = writeln!(
        s,
        "   disk images identical: {}   guest checksums equal: {}   all exits {} -> {}   guest-measured {} -> {} sectors/s",
        if t["images_identical"] == json!(true) { "yes" } else { "NO" },
        if t["checksums_equal"] == json!(true) { "yes" } else { "NO" },
        u(&t["exits_total_before"]),
        u(&t["exits_total_after"]),
        f(&t["sectors_per_s_before"]),
        f(&t["sectors_per_s_after"])
    );
    let _ = writeln!(s);

    let tm = &j["timer"];
    let _ = writeln!(
        s,
        "3. Fig. 7: disk writes with the guest timer on, 1000 Hz vs --pit-hz 100 (timer-disk, {} sectors)",
        u(&tm["sectors"])
    );
    let _ = writeln!(s, "   {:<10} {:>12} {:>14} {:>14} {:>8} {:>10} {:>16}", "rate", "timer exits", "exit time (s)", "tinyvmm count", "ticks", "I/O (s)", "guest sectors/s");
    for (name, v) in [("1000 Hz", &tm["hz1000"]), ("100 Hz", &tm["hz100"])] {
        let _ = writeln!(
            s,
            "   {:<10} {:>12} {:>14.6} {:>14} {:>8} {:>10.3} {:>16.1}",
            name,
            u(&v["timer_exits"]),
            f(&v["timer_exit_time_ns"]) / 1e9,
            u(&v["tinyvmm_timer_exits"]),
            u(&v["ticks"]),
            f(&v["io_s"]),
            f(&v["sectors_per_s"])
        );
    }
    let _ = writeln!(
        s,
        "   ours: {:.1}x fewer timer-related exits, {:+.1}% disk write throughput   paper: up to +{:.0}% I/O throughput",
        f(&tm["timer_exit_reduction_factor"]),
        f(&tm["throughput_gain_pct"]),
        paper::FIG7_MAX_IO_GAIN_PCT
    );
    let _ = writeln!(
        s,
        "   (timer exits = recorded exits in timer_interrupt, ack_irq, timer_isr_entry; tinyvmm count = EOI writes + interrupt windows; sectors/s by the guest's PM timer over its I/O phase; disk images identical: {})",
        if tm["images_identical"] == json!(true) { "yes" } else { "NO" }
    );
    let _ = writeln!(s);

    let p = &j["pmtmr"];
    let _ = writeln!(s, "4. Fig. 8 / Table 3: boot with the PM-timer calibration (verify_pmtmr_rate) on and off");
    let _ = writeln!(s, "   {:<16} {:>8} {:>26} {:>10}  {}", "calibration", "exits", "exits in verify_pmtmr_rate", "boot (ms)", "top function");
    for (name, v) in [("on", &p["on"]), ("off", &p["off"])] {
        let _ = writeln!(
            s,
            "   {:<16} {:>8} {:>26} {:>10.1}  {}",
            name,
            u(&v["exits"]),
            u(&v["verify_pmtmr_rate_exits"]),
            f(&v["boot_ms"]),
            v["top_function"].as_str().map(short_fn).unwrap_or("-")
        );
    }
    let _ = writeln!(s, "   paper: verify_pmtmr_rate's PM-timer reads are redundant boot-time exits; removing them removes the exits");
    let _ = writeln!(s);
    let _ = writeln!(s, "plots:");
    if let Some(m) = j["plots"].as_object() {
        for v in m.values() {
            let _ = writeln!(s, "   {}", v.as_str().unwrap_or(""));
        }
    }
}
