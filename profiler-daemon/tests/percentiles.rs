//! p50/p99 from the in-kernel histograms against the exact quantiles of the same exits, taken
//! from `--records`, on a guest with a known mix of exit latencies: fast `out`s and `in`s the
//! VMM answers only after 150 µs. Needs root, KVM, BPF and tracefs: fails without them.
mod common;

use common::*;
use profiler_daemon::model::recording;

/// The exact `q`-quantile by the rule the report uses: the ⌈q·n⌉-th smallest.
fn exact(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

fn within_10_percent(estimate: u64, exact: u64, what: &str) {
    let (e, x) = (estimate as f64, exact as f64);
    assert!((e - x).abs() <= 0.10 * x, "{what}: histogram says {estimate} ns, exact is {exact} ns");
}

#[test]
fn histogram_percentiles_are_within_10_percent_of_exact() {
    require_live();
    let dir = tmpdir();
    let out = dir.path().join("mix.kvmprof");
    let (outs, ins) = (3000u64, 1000u64);
    let o = run(
        KVMPROF,
        &["record", "--records", "-o", path_str(&out), "--", &exit_loop(), "--outs", &outs.to_string(), "--ins", &ins.to_string(), "--in-delay-us", "150"],
    );
    assert!(o.status.success(), "record failed: {}", stderr(&o));
    let rec = recording::load(&out).unwrap();
    assert_eq!(rec.meta.records_dropped, 0);
    let records = &recording::records(&rec).expect("records");

    // Every I/O exit together (bimodal: p50 among the fast outs, p99 among the slow ins), then
    // each exit site alone.
    let io_reason = io_reason();
    let by_reason = report_json(&out, &["--by", "reason"]);
    let io = row_at(&by_reason, "reason", io_reason);
    assert_eq!(io["count"], outs + ins);
    let mut io_times: Vec<u64> = records.iter().filter(|r| rec.exits[r.exit].reason.name() == io_reason).map(|r| r.duration_ns).collect();
    io_times.sort_unstable();
    assert_eq!(io_times.len() as u64, outs + ins);
    within_10_percent(io["p50_ns"].as_u64().unwrap(), exact(&io_times, 0.50), "IO p50");
    within_10_percent(io["p99_ns"].as_u64().unwrap(), exact(&io_times, 0.99), "IO p99");
    assert!(exact(&io_times, 0.99) >= 150_000, "the slow reads are the top 25%: p99 {}", exact(&io_times, 0.99));
    assert!(exact(&io_times, 0.50) < 150_000, "the fast writes are the bottom 75%: p50 {}", exact(&io_times, 0.50));

    let by_rip = report_json(&out, &["--by", "rip"]);
    for (i, e) in rec.exits.iter().enumerate() {
        let mut times: Vec<u64> = records.iter().filter(|r| r.exit == i).map(|r| r.duration_ns).collect();
        times.sort_unstable();
        assert_eq!(times.len() as u64, e.stats.count);
        let row = row_at(&by_rip, "rip", &format!("{:#x}", e.rip));
        for (q, key) in [(0.50, "p50_ns"), (0.99, "p99_ns")] {
            within_10_percent(row[key].as_u64().unwrap(), exact(&times, q), &format!("{key} at {:#x}", e.rip));
        }
    }
}
