//! `--stats-json` is the `tinyvmm_abi::stats::RunStats` document: written from it, read
//! back into it strictly (`deny_unknown_fields`), with the exact exit counts of the crate
//! docs ("Exact exits of the disk workloads").

mod common;
use common::*;
use vmm::abi::stats::{RunOutcome, RunStats};

/// Sectors per run: small, the counts are exact for any N.
const N: u64 = 7;

fn read_strict(path: &std::path::Path) -> RunStats {
    let text = std::fs::read_to_string(path).expect("stats file");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a RunStats: {e}\n{text}"))
}

fn disk_write(dir: &std::path::Path, img: &std::path::Path, batch: bool, name: &str) -> RunStats {
    require_kvm();
    let json = dir.join(format!("{name}.json"));
    let n = N.to_string();
    let mut cmd = tinyvmm();
    cmd.args(["run", "--quiet", "--workload", "disk-write", "--count", &n, "--skip-pmtmr-calibration", "--name", name, "--disk"])
        .arg(img)
        .arg("--stats-json")
        .arg(&json);
    if batch {
        cmd.arg("--batch-pio");
    }
    let out = cmd.output().expect("run tinyvmm");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    read_strict(&json)
}

fn taskfile(s: &RunStats) -> u64 {
    (0x1f1..=0x1f7).map(|p| s.port_exits(p)).sum()
}

#[test]
fn stats_json_is_a_run_stats_with_exact_disk_write_counts() {
    let t = tempfile::tempdir().unwrap();
    let plain = image(t.path(), "plain.img", 16);
    let batched = image(t.path(), "batched.img", 16);
    let s = disk_write(t.path(), &plain, false, "plain");
    let b = disk_write(t.path(), &batched, true, "batched");
    let data = std::fs::read(&plain).unwrap();
    let want_checksum = u64::from_str_radix(checksum(&data[..N as usize * SECTOR]).trim_start_matches("0x"), 16).unwrap();

    for (r, batch, name) in [(&s, false, "plain"), (&b, true, "batched")] {
        assert_eq!(r.name.as_deref(), Some(name));
        assert_eq!(r.workload, "disk-write");
        assert_eq!((r.count, r.batch_pio, r.pmtmr_calibration), (N, batch, false));
        assert_eq!(r.pit_hz, None, "no --pit-hz: null, not 0");
        assert_eq!(r.timer.delivered_hz, None);
        assert_eq!(r.outcome, RunOutcome::GuestExit);
        assert_eq!(r.outcome_detail, "guest exited with status 0");
        assert_eq!(r.guest_exit_status, Some(0));
        assert_eq!(r.guest_entry, 0x10_0000);
        // Every exit is port I/O here, and every port-I/O exit is in by_port once.
        assert_eq!(r.exits_total, r.by_kind.io);
        assert_eq!(r.by_kind.io, r.by_port.values().sum::<u64>());
        assert_eq!((r.by_kind.hlt, r.by_kind.mmio, r.by_kind.shutdown, r.by_kind.other), (0, 0, 0, 0));
        // Boot, once per run, and the data port: 256 exits per written sector + IDENTIFY.
        for (p, n) in [(0x20, 1), (0x21, 4), (0x40, 2), (0x43, 1), (0x501, 1), (0x3f6, 1)] {
            assert_eq!(r.port_exits(p), n, "port {p:#x}");
        }
        assert_eq!(r.port_exits(0x1f0), 256 * N + 1);
        assert_eq!(r.port_exits(0x608), 2 + N / 128);
        assert_eq!(r.port_exits(0x42), 0, "no calibration");
        let ide = r.ide.expect("a disk: ide is not null");
        assert_eq!((ide.commands, ide.sectors_written, ide.sectors_read, ide.flushes, ide.errors), (N + 2, N, 0, 1, 0));
        assert_eq!(r.unclaimed_port_accesses, 0);
        assert_eq!(r.hypercall_errors, Default::default());
        let g = r.guest.as_ref().expect("guest report");
        assert_eq!(g.unparsed, None);
        assert_eq!((g.workload.as_deref(), g.status.as_deref()), (Some("disk-write"), Some("ok")));
        assert_eq!((g.sectors, g.requested, g.batched, g.disk_sectors), (Some(N), Some(N), Some(batch), Some(16)));
        assert_eq!(g.checksum, Some(want_checksum));
        assert_eq!(g.pmtmr_calibrated, Some(false));
        // Fields of other workloads are absent, not 0.
        assert_eq!((g.pmtmr_reads, g.ticks, g.ide_error, g.queue_bad_op), (None, None, None, None));
    }
    // Unbatched: ports 0x1f1-0x1f7 see 15N+6 exits.
    for p in 0x1f1..=0x1f5 {
        assert_eq!(s.port_exits(p), 2 * N, "port {p:#x}");
    }
    assert_eq!(s.port_exits(0x1f6), N + 2);
    assert_eq!(s.port_exits(0x1f7), 4 * N + 4);
    assert_eq!(taskfile(&s), 15 * N + 6);
    assert_eq!((s.hypercalls, s.hypercall_entries, s.port_exits(0x510)), (0, 0, 0));
    assert!(s.replayed_by_port.is_empty());
    // Batched: N+6, one doorbell per sector carrying 14 accesses.
    assert_eq!(taskfile(&b), N + 6);
    assert_eq!((b.hypercalls, b.hypercall_entries, b.port_exits(0x510)), (N, 14 * N, N));
    assert_eq!(b.replayed_by_port.values().sum::<u64>(), 14 * N);
    assert_eq!(b.replayed(0x1f7), 3 * N);
    assert_eq!(b.replayed(0x1f3), 2 * N);
    assert_eq!(b.replayed(0x1f6), N);
    assert_eq!(std::fs::read(&batched).unwrap(), data, "same image batched or not");
}

#[test]
fn stats_json_of_a_triple_fault_has_nulls_where_nothing_is_known() {
    require_kvm();
    let t = tempfile::tempdir().unwrap();
    let json = t.path().join("tf.json");
    let out = tinyvmm()
        .args(["run", "--quiet", "--workload", "triple-fault", "--skip-pmtmr-calibration", "--pit-hz", "250", "--stats-json"])
        .arg(&json)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = std::fs::read_to_string(&json).unwrap();
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    for k in ["name", "guest_exit_status", "ide", "guest"] {
        assert!(raw[k].is_null() && raw.as_object().unwrap().contains_key(k), "{k} must be written as null");
    }
    let s = read_strict(&json);
    assert_eq!(s.outcome, RunOutcome::TripleFault);
    assert!(s.outcome_detail.starts_with("guest triple fault (KVM_EXIT_SHUTDOWN) at rip 0x"), "{}", s.outcome_detail);
    assert_eq!((s.guest_exit_status, s.ide, s.name.as_deref()), (None, None, None));
    assert!(s.guest.is_none(), "no result line: null, not an empty report");
    assert_eq!(s.by_kind.shutdown, 1);
    assert_eq!((s.pit_hz, s.timer.delivered_hz), (Some(250), Some(250)));
    assert_eq!(s.port_exits(0x501), 0, "the guest never reached its exit port");
}
