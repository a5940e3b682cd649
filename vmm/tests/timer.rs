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
