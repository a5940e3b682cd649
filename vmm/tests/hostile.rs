//! A hostile guest: every misbehaviour gets a defined answer, the VMM never panics, and
//! well-formed I/O works again afterwards.

mod common;
use common::*;

#[test]
fn hostile_guest_gets_error_codes_and_vmm_keeps_running() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), "h.img", 64);
    let r = run(t.path(), &["--disk", img.to_str().unwrap(), "--workload", "hostile", "--skip-pmtmr-calibration"]);
    r.assert_ok();
    let g = r.guest();
    assert_eq!(g["workload"], "hostile");
    // Batched-PIO queue errors: 1 = not in RAM, 2 = count over 64, 3 = bad entry.
    assert_eq!(g["queue_outside_ram"], 1);
    assert_eq!(g["queue_straddles_ram_end"], 1);
    assert_eq!(g["queue_address_wraps"], 1);
    assert_eq!(g["queue_count_over_limit"], 2);
    assert_eq!(g["queue_count_huge"], 2);
    assert_eq!(g["queue_bad_op"], 3);
    assert_eq!(g["queue_bad_size"], 3);
    assert_eq!(g["queue_nested_doorbell"], 3);
    assert_eq!(g["queue_empty"], 0);
    // Unknown ports read as all ones, in a batch or trapped.
    assert_eq!(g["queue_unknown_port"], 0);
    assert_eq!(g["queue_unknown_port_value"], 0xff);
    assert_eq!(g["unknown_in8"], 0xff);
    assert_eq!(g["unknown_in16"], 0xffff);
    assert_eq!(g["unknown_in32"], 0xffff_ffffu32);
    // Out-of-range LBAs (48- and 28-bit): status DRDY|DSC|ERR, error IDNF; then a good read.
    assert_eq!(g["disk_sectors"], 64);
    for k in ["lba48_read_out_of_range", "lba48_write_out_of_range", "lba28_read_out_of_range"] {
        assert_eq!(g[k], 0x5110, "{k}");
    }
    assert_eq!(g["ide_unknown_command"], 0x5104, "ABRT");
    assert_eq!(g["ide_recovered"], true);
    // After 3000 arbitrary accesses to the IDE registers, and after all the malformed
    // queues: a reset, then one sector written and read back, trapped (LBA 5) and batched
    // (LBA 6). The data read back is the pattern written.
    let t = r.typed().guest.as_ref().unwrap();
    let sum = |lba| u64::from_str_radix(checksum(&pattern_sector(lba)).trim_start_matches("0x"), 16).unwrap();
    assert_eq!((t.ide_garbage_recovery, t.ide_garbage_readback), (Some(0), Some(sum(5))));
    assert_eq!((t.batch_recovery, t.batch_readback), (Some(0), Some(sum(6))));
    let s = r.stats();
    assert_eq!(s["hypercall_errors"]["address"], 3);
    assert_eq!(s["hypercall_errors"]["count"], 2);
    assert_eq!(s["hypercall_errors"]["entry"], 3);
    // 10 hostile doorbells (1 entry replayed), + the batched write and read (14 each).
    assert_eq!(s["hypercalls"], 12);
    assert_eq!(s["hypercall_entries"], 1 + 2 * 14);
    assert_eq!(r.typed().replayed(0x1f7), 2 * 3);
    assert_eq!(s["unclaimed_port_accesses"], 6);
    assert_eq!(r.port("0x1234"), 2);
    assert_eq!(r.port("0xdead"), 2);
    assert_eq!(s["ide"]["sectors_written"], 2, "only the two recovery sectors");
    // Byte for byte: the two recovery sectors hold the pattern, nothing else was written.
    let mut want = vec![0u8; 64 * SECTOR];
    for lba in [5, 6] {
        want[lba as usize * SECTOR..][..SECTOR].copy_from_slice(&pattern_sector(lba));
    }
    assert!(std::fs::read(&img).unwrap() == want, "stray writes, or the recovery sectors differ");
}

#[test]
fn triple_fault_is_reported_with_stats() {
    let t = tempfile::tempdir().unwrap();
    let r = run(t.path(), &["--workload", "triple-fault", "--skip-pmtmr-calibration"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    let err = r.stderr();
    assert!(!err.contains("panicked"), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("tinyvmm: guest triple fault (KVM_EXIT_SHUTDOWN) at rip 0x"), "{err}");
    assert_eq!(r.stats()["outcome"], "triple-fault");
    assert_eq!(r.stats()["by_kind"]["shutdown"], 1);
}
