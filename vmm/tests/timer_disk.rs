//! Fig. 7's workload: disk writes with the guest timer on (IRQ0 at the programmed
//! 1000 Hz), delivered at 1000 Hz and rescaled to 100 Hz with --pit-hz 100. The data must
//! land intact, the guest must count about one tick per period of its I/O phase, the IDE
//! exits must stay exactly those of disk-write, and the timer-related exits must drop.

mod common;
use common::*;

const N: u64 = 500;
const PM_HZ: f64 = 3_579_545.0;

fn timer_disk(dir: &std::path::Path, img: &std::path::Path, extra: &[&str]) -> Run {
    let n = N.to_string();
    let mut args = vec!["--disk", img.to_str().unwrap(), "--workload", "timer-disk", "--count", &n, "--skip-pmtmr-calibration"];
    args.extend_from_slice(extra);
    let r = run(dir, &args);
    r.assert_ok();
    r
}

fn taskfile_exits(r: &Run) -> u64 {
    (0x1f1..=0x1f7).map(|p| r.port(&format!("{p:#x}"))).sum()
}

/// EOI writes (port 0x20, minus the boot's ICW1) and interrupt-window exits.
fn timer_exits(r: &Run) -> u64 {
    r.port("0x20") - 1 + r.stats()["by_kind"]["irq_window"].as_u64().unwrap()
}

#[test]
fn timer_disk_at_1000hz_and_100hz_writes_the_pattern_counts_ticks_and_keeps_ide_exits() {
    let t = tempfile::tempdir().unwrap();
    let sectors = N as usize + 50;
    let imgs: Vec<_> = ["hz1000.img", "hz100.img", "hz1000-batched.img"].iter().map(|n| image(t.path(), n, sectors)).collect();
    // Bytes past the written range must stay untouched.
    let mut tail = std::fs::read(&imgs[0]).unwrap();
    for (i, b) in tail.iter_mut().enumerate().skip(N as usize * SECTOR) {
        *b = (i % 251) as u8;
    }
    for p in &imgs {
        std::fs::write(p, &tail).unwrap();
    }

    let fast = timer_disk(t.path(), &imgs[0], &[]);
    let slow = timer_disk(t.path(), &imgs[1], &["--pit-hz", "100"]);
    let batched = timer_disk(t.path(), &imgs[2], &["--batch-pio"]);

    // Byte for byte: the disk-write pattern in the first N sectors, the rest as it was.
    let img = std::fs::read(&imgs[0]).unwrap();
    assert_eq!(img.len(), sectors * SECTOR);
    for lba in 0..N {
        let s = &img[lba as usize * SECTOR..(lba as usize + 1) * SECTOR];
        assert!(s == pattern_sector(lba).as_slice(), "sector {lba} differs from the pattern");
    }
    assert!(img[N as usize * SECTOR..] == tail[N as usize * SECTOR..], "bytes past the written range changed");
    for p in &imgs[1..] {
        assert!(std::fs::read(p).unwrap() == img, "{} differs", p.display());
    }
    let want = checksum(&img[..N as usize * SECTOR]);

    for (r, hz) in [(&fast, 1000.0), (&slow, 100.0), (&batched, 1000.0)] {
        let g = r.guest();
        assert_eq!(g["workload"], "timer-disk");
        assert_eq!(g["status"], "ok");
        assert_eq!(g["sectors"], N);
        assert_eq!(g["checksum"], want.as_str());
        assert_eq!(g["programmed_hz"], 1000, "the guest programs 1000 Hz either way");
        assert!(g["sectors_per_sec"].as_u64().unwrap() > 0);
        assert_eq!(r.stats()["ide"]["sectors_written"], N);
        assert_eq!(r.stats()["ide"]["flushes"], 1);

        // Ticks over the I/O phase, timed by the guest's PM timer. IRQ0 is delivered at
        // the next exit after it is due: a compute stretch (the pattern, the checksum)
        // longer than a period drops periods (counted by tinyvmm), never adds ticks.
        let ticks = g["ticks"].as_f64().unwrap();
        let secs = g["pm_ticks"].as_f64().unwrap() / PM_HZ;
        let want_ticks = hz * secs;
        assert!(secs > 0.5, "the I/O phase took only {secs} s");
        assert!(ticks >= want_ticks * 0.80 && ticks <= want_ticks * 1.10, "{ticks} ticks in {secs} s at {hz} Hz");
        let missed = r.stats()["timer"]["irq0_missed_periods"].as_f64().unwrap();
        assert!((ticks + missed - want_ticks).abs() <= want_ticks * 0.15, "{ticks} ticks + {missed} missed in {secs} s at {hz} Hz");
        // Every tick was injected, taken and acknowledged once (0x20: + the ICW1 write).
        assert_eq!(r.stats()["interrupts_injected"].as_f64().unwrap(), ticks);
        assert_eq!(r.stats()["timer"]["eoi_writes"].as_f64().unwrap(), ticks);
        assert_eq!(r.port("0x20") as f64, ticks + 1.0);
        // Boot's 4 PIC writes, + unmask and mask IRQ0 around the I/O phase.
        assert_eq!(r.port("0x21"), 6);
        assert_eq!(r.stats()["by_kind"]["hlt"], 0);
    }

    // The IDE and PM-timer exits are exactly disk-write's (see tests/disk.rs).
    for r in [&fast, &slow] {
        assert_eq!(taskfile_exits(r), 15 * N + 6);
        assert_eq!(r.port("0x1f7"), 4 * N + 4);
        assert_eq!(r.port("0x510"), 0);
    }
    assert_eq!(taskfile_exits(&batched), N + 6);
    assert_eq!(batched.port("0x510"), N);
    assert_eq!(batched.stats()["hypercall_entries"], 14 * N);
    for r in [&fast, &slow, &batched] {
        assert_eq!(r.port("0x1f0"), 256 * N + 1);
        assert_eq!(r.port("0x3f6"), 1);
        assert_eq!(r.port("0x608"), 2 + N / 128);
    }

    // Timer-related exits (EOIs + interrupt windows) drop >= 5x at 100 Hz.
    let (a, b) = (timer_exits(&fast), timer_exits(&slow));
    assert!(b > 0 && a >= 5 * b, "timer exits {a} -> {b}");
}

#[test]
fn timer_disk_needs_a_disk() {
    require_kvm();
    let out = tinyvmm().args(["run", "--workload", "timer-disk"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --disk"));
}
