//! PIT acceptance: the guest programs 1000 Hz; it gets 1000 ticks per second of wall
//! time, or 100 with --pit-hz 100, and the timer-related exits drop accordingly.

mod common;
use common::*;
use std::time::Instant;

fn timer(dir: &std::path::Path, extra: &[&str]) -> (Run, f64) {
    let mut args = vec!["--workload", "timer", "--seconds", "3", "--skip-pmtmr-calibration"];
    args.extend_from_slice(extra);
    let t0 = Instant::now();
    let r = run(dir, &args);
    let wall = t0.elapsed().as_secs_f64();
    r.assert_ok();
    (r, wall)
}

fn within(x: f64, want: f64, tol: f64) -> bool {
    (x - want).abs() <= want * tol
}

#[test]
fn pit_1000hz_and_rescaled_100hz() {
    let t = tempfile::tempdir().unwrap();
    let (fast, wall_fast) = timer(t.path(), &[]);
    let (slow, wall_slow) = timer(t.path(), &["--pit-hz", "100"]);

    for (r, wall, hz) in [(&fast, wall_fast, 1000.0), (&slow, wall_slow, 100.0)] {
        let g = r.guest();
        assert_eq!(g["programmed_hz"], 1000, "the guest programs 1000 Hz either way");
        assert_eq!(r.stats()["timer"]["programmed_hz"].as_f64().unwrap().round(), 1000.0);
        let ticks = g["ticks"].as_f64().unwrap();
        // Ticks per second of the guest's PM timer (wall time inside the VM)...
        let pm_secs = g["pm_ticks"].as_f64().unwrap() / 3_579_545.0;
        assert!(within(pm_secs, 3.0, 0.05), "timed {pm_secs} s");
        let rate = ticks / pm_secs;
        assert!(within(rate, hz, 0.10), "{rate} ticks/s, want {hz} +-10%");
        // ...and per second of the host's wall clock around the whole run (boot included).
        assert!(ticks / wall <= hz * 1.10 && ticks / wall >= hz * 0.80, "{ticks} ticks in {wall} s");
        // Every delivered tick was injected, taken, and acknowledged once.
        assert_eq!(r.stats()["interrupts_injected"].as_f64().unwrap(), ticks);
        assert_eq!(r.port("0x20") as f64, ticks + 1.0, "EOIs + the ICW1 write");
    }

    // Timer-related exits (EOI writes, HLT wake-ups, interrupt windows) drop ~10x.
    let timer_exits = |r: &Run| {
        r.port("0x20") + r.stats()["by_kind"]["hlt"].as_u64().unwrap() + r.stats()["by_kind"]["irq_window"].as_u64().unwrap()
    };
    let (a, b) = (timer_exits(&fast) as f64, timer_exits(&slow) as f64);
    assert!(within(a / b, 10.0, 0.15), "timer exits {a} -> {b}");
}

#[test]
fn pmtmr_calibration_on_is_a_port_io_hot_spot_and_off_is_gone() {
    let t = tempfile::tempdir().unwrap();
    let on = run(t.path(), &["--workload", "pio-loop", "--count", "10"]);
    let off = run(t.path(), &["--workload", "pio-loop", "--count", "10", "--skip-pmtmr-calibration"]);
    on.assert_ok();
    off.assert_ok();
    let g = on.guest();
    assert_eq!(g["pmtmr_calibrated"], true);
    assert_eq!(g["pmtmr_ok"], true, "PM timer delta {} vs expected {}", g["pmtmr_delta"], g["pmtmr_expected"]);
    let reads = g["pmtmr_reads"].as_u64().unwrap();
    assert!(reads > 100, "calibration loop ran {reads} times");
    // Per iteration: PIT latch (0x43), two channel-2 reads (0x42), one PM-timer read
    // (0x608); plus one of each before the loop, channel 2's programming (0x43 once, 0x42
    // twice), the boot's channel-0 programming and pio-loop's two PM reads.
    assert_eq!(on.port("0x608"), reads + 1 + 2);
    assert_eq!(on.port("0x43"), reads + 1 + 1 + 1);
    assert_eq!(on.port("0x42"), 2 * (reads + 1) + 2);
    assert_eq!(on.port("0x40"), 2);
    assert_eq!(off.guest()["pmtmr_calibrated"], false);
    assert_eq!(off.port("0x608"), 2);
    assert_eq!(off.port("0x43"), 1);
    assert_eq!(off.port("0x40"), 2);
    assert_eq!(off.port("0x42"), 0);
    assert_eq!(off.port("0x80"), 10);
}
