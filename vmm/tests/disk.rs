//! Disk integrity and the batching acceptance: exact exit counts per port.

mod common;
use common::*;

const N: u64 = 1000;

fn write(dir: &std::path::Path, img: &std::path::Path, batch: bool) -> Run {
    let n = N.to_string();
    let mut args = vec!["--disk", img.to_str().unwrap(), "--workload", "disk-write", "--count", &n, "--skip-pmtmr-calibration"];
    if batch {
        args.push("--batch-pio");
    }
    let r = run(dir, &args);
    r.assert_ok();
    r
}

fn read(dir: &std::path::Path, img: &std::path::Path, batch: bool) -> Run {
    let n = N.to_string();
    let mut args = vec!["--disk", img.to_str().unwrap(), "--workload", "disk-read", "--count", &n, "--skip-pmtmr-calibration"];
    if batch {
        args.push("--batch-pio");
    }
    let r = run(dir, &args);
    r.assert_ok();
    r
}

/// Ports 0x1f1..=0x1f7, the task-file registers the paper's Table 4 counts.
fn taskfile_exits(r: &Run) -> u64 {
    (0x1f1..=0x1f7).map(|p| r.port(&format!("{p:#x}"))).sum()
}

#[test]
fn disk_write_read_integrity_batching_and_exact_exit_counts() {
    let t = tempfile::tempdir().unwrap();
    let sectors = 1200usize;
    let plain = image(t.path(), "plain.img", sectors);
    let batched = image(t.path(), "batched.img", sectors);
    // Bytes past the written range must stay untouched.
    let mut tail = std::fs::read(&plain).unwrap();
    for (i, b) in tail.iter_mut().enumerate().skip(N as usize * SECTOR) {
        *b = (i % 251) as u8;
    }
    std::fs::write(&plain, &tail).unwrap();
    std::fs::write(&batched, &tail).unwrap();

    let w = write(t.path(), &plain, false);
    let wb = write(t.path(), &batched, true);

    // Byte for byte: the pattern in the first N sectors, the rest as it was.
    let img = std::fs::read(&plain).unwrap();
    assert_eq!(img.len(), sectors * SECTOR);
    for lba in 0..N {
        let s = &img[lba as usize * SECTOR..(lba as usize + 1) * SECTOR];
        assert!(s == pattern_sector(lba).as_slice(), "sector {lba} differs from the pattern");
    }
    assert!(img[N as usize * SECTOR..] == tail[N as usize * SECTOR..], "bytes past the written range changed");
    assert!(img == std::fs::read(&batched).unwrap(), "batched and unbatched images differ");

    let want = checksum(&img[..N as usize * SECTOR]);
    for r in [&w, &wb] {
        assert_eq!(r.guest()["status"], "ok");
        assert_eq!(r.guest()["sectors"], N);
        assert_eq!(r.guest()["checksum"], want.as_str());
        assert_eq!(r.stats()["ide"]["sectors_written"], N);
        assert_eq!(r.stats()["ide"]["flushes"], 1);
    }

    // Exact exits, unbatched write (see the crate docs for the derivation).
    let boot = [("0x20", 1), ("0x21", 4), ("0x40", 2), ("0x43", 1), ("0x501", 1), ("0x3f6", 1)];
    for (p, n) in boot {
        assert_eq!(w.port(p), n, "port {p}");
        assert_eq!(wb.port(p), n, "port {p} batched");
    }
    for p in ["0x1f1", "0x1f2", "0x1f3", "0x1f4", "0x1f5"] {
        assert_eq!(w.port(p), 2 * N, "port {p}");
        assert_eq!(wb.port(p), 0, "port {p} batched");
    }
    assert_eq!(w.port("0x1f6"), N + 2);
    assert_eq!(w.port("0x1f7"), 4 * N + 4);
    assert_eq!(w.port("0x1f0"), 256 * N + 1);
    assert_eq!(w.port("0x510"), 0);
    assert_eq!(w.port("0x608"), 2 + N / 128);
    assert_eq!(w.stats()["hypercalls"], 0);
    // Batched write.
    assert_eq!(wb.port("0x1f6"), 2);
    assert_eq!(wb.port("0x1f7"), N + 4);
    assert_eq!(wb.port("0x1f0"), 256 * N + 1);
    assert_eq!(wb.port("0x510"), N);
    assert_eq!(wb.port("0x608"), 2 + N / 128);
    assert_eq!(wb.stats()["hypercalls"], N);
    assert_eq!(wb.stats()["hypercall_entries"], 14 * N);
    assert_eq!(wb.stats()["replayed_by_port"]["0x1f7"], 3 * N);
    assert_eq!(wb.stats()["replayed_by_port"]["0x1f3"], 2 * N);

    // Table 4: the task-file register exits drop by at least 90%.
    let (before, after) = (taskfile_exits(&w), taskfile_exits(&wb));
    assert_eq!(before, 15 * N + 6);
    assert_eq!(after, N + 6);
    assert!(after * 10 <= before, "only {before} -> {after}");
    let kinds = &w.stats()["by_kind"];
    assert_eq!(w.stats()["exits_total"], kinds["io"].as_u64().unwrap() + kinds["hlt"].as_u64().unwrap());

    // Reads return the same checksum, batched or not, with their own exact counts.
    let r = read(t.path(), &plain, false);
    let rb = read(t.path(), &batched, true);
    for x in [&r, &rb] {
        assert_eq!(x.guest()["checksum"], want.as_str());
        assert_eq!(x.guest()["sectors"], N);
        assert_eq!(x.port("0x1f0"), N + 1, "rep insw: one exit per sector");
        assert_eq!(x.stats()["ide"]["sectors_written"], 0);
    }
    assert_eq!(taskfile_exits(&r), 15 * N + 3);
    assert_eq!(taskfile_exits(&rb), N + 3);
    assert_eq!(rb.port("0x510"), N);
    assert!(std::fs::read(&plain).unwrap() == img, "a read changed the image");
}

#[test]
fn writing_past_the_end_of_the_image_is_an_ide_error_not_a_crash() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), "small.img", 8);
    let r = run(t.path(), &["--disk", img.to_str().unwrap(), "--workload", "disk-write", "--count", "20", "--skip-pmtmr-calibration"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(r.stderr().contains("guest reported failure"), "{}", r.stderr());
    let g = r.guest();
    assert_eq!(g["status"], "error");
    assert_eq!(g["sectors"], 8);
    assert_eq!(g["ide_error"], 0x10, "IDNF");
    assert_eq!(r.stats()["ide"]["sectors_written"], 8);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 8 * SECTOR as u64, "the image grew");
}
