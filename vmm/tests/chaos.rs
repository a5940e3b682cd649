//! The chaos workload (vmm/guest/src/chaos.rs): 60 s of a seeded random stream of port
//! accesses, batch hypercalls with random queues and random IDE commands. tinyvmm must
//! survive it, end cleanly, and its --stats-json must account for every access the guest
//! made (handled, rejected or unclaimed), exactly as the guest counted them.
//! `TINYVMM_CHAOS_SECONDS` / `TINYVMM_CHAOS_SEED` run it longer or with another seed by hand.

mod common;
use common::*;
use std::collections::BTreeMap;

/// Exits of boot (pic_init, pit_init) outside the chaos stream, per port (see vmm/src/lib.rs).
const BOOT: [(u16, u64); 4] = [(0x20, 1), (0x21, 4), (0x40, 2), (0x43, 1)];

#[test]
fn chaos_guest_for_60_s_every_access_is_accounted_for() {
    let seconds = std::env::var("TINYVMM_CHAOS_SECONDS").unwrap_or_else(|_| "60".into());
    let seed = std::env::var("TINYVMM_CHAOS_SEED").unwrap_or_else(|_| "16".into());
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path(), "chaos.img", 64);
    let r = run(t.path(), &["--disk", img.to_str().unwrap(), "--workload", "chaos", "--count", &seed, "--seconds", &seconds, "--skip-pmtmr-calibration"]);
    r.assert_ok();
    let s = r.typed();
    let g = s.guest.as_ref().expect("the guest's report");
    assert_eq!((g.workload.as_deref(), g.status.as_deref(), g.chaos_mismatches), (Some("chaos"), Some("ok"), Some(0)), "{g:?}");
    assert_eq!(s.outcome_detail, "guest exited with status 0");
    let doorbells = g.chaos_doorbells.unwrap();
    let ops = g.chaos_ops.unwrap();
    println!("chaos seed {seed}, {seconds} s: {ops} operations, doorbells ok/address/count/entry {doorbells:?}, {} entries replayed, {} unclaimed, {} IDE commands, {} exits",
        g.chaos_entries.unwrap(), g.chaos_unclaimed.unwrap(), g.chaos_ide_commands.unwrap(), s.exits_total);

    // Hypercalls: every doorbell, by outcome, and every replayed entry, per port.
    assert_eq!(s.hypercalls, doorbells.iter().sum::<u64>(), "doorbells");
    assert_eq!([s.hypercall_errors.address, s.hypercall_errors.count, s.hypercall_errors.entry], [doorbells[1], doorbells[2], doorbells[3]], "refused, by reason");
    assert_eq!(s.hypercall_entries, g.chaos_entries.unwrap(), "replayed entries");
    assert_eq!(s.replayed_by_port, g.chaos_replayed, "replayed accesses per port");
    // Trapped accesses: each port's exits are the guest's accesses plus boot's; the other
    // ports with exits are the doorbell, the console and the exit port.
    let mut want: BTreeMap<u16, u64> = g.chaos_trapped.clone();
    for (p, n) in BOOT {
        *want.entry(p).or_default() += n;
    }
    want.insert(0x510, s.hypercalls);
    want.insert(0x501, 1);
    let mut got = s.by_port.clone();
    let console = got.remove(&0x3f8).unwrap_or(0);
    assert!(console > 100, "the report went out on COM1");
    assert_eq!(got, want, "exits per port: tinyvmm's vs the guest's");
    assert_eq!(s.unclaimed_port_accesses, g.chaos_unclaimed.unwrap(), "unclaimed accesses, trapped and replayed");
    // Every exit is of a kind, every I/O exit on a port.
    let k = &s.by_kind;
    assert_eq!(s.exits_total, k.io + k.hlt + k.mmio + k.irq_window + k.shutdown + k.intr + k.other);
    assert_eq!(k.io, s.by_port.values().sum::<u64>());
    assert_eq!((k.mmio, k.shutdown, k.other), (0, 0, 0));
    // The stream did exercise every kind of trouble.
    assert!(ops > 1000 && doorbells.iter().all(|n| *n > 0) && g.chaos_unclaimed.unwrap() > 0, "{g:?}");
    assert!(s.ide.as_ref().unwrap().commands > 0);
}
