//! `kvmprof record` on the calibration guest in 64-bit long mode (`kvm-exit-loop --long-mode`):
//! the same exact counts as in real mode, at the 64-bit guest's RIPs (CS base 0 by definition,
//! no CS base read). Live: needs root, KVM, BPF, tracefs (fails without them).
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;
use kvm_exit_loop::{ExitLoopGuest, Mode, LOAD_ADDR};
use profiler_daemon::model::{recording, Direction, Profile};

fn at(p: &Profile, rip: u64) -> u64 {
    p.exits.iter().filter(|e| e.rip == rip).map(|e| e.stats.count).sum()
}

/// `kvmprof record --pid` on `kvm-exit-loop --long-mode --outs 1000 --wait-for-go`: the
/// guest starts only once the programs are attached, so every exit is seen.
#[test]
fn long_mode_outs_are_counted_exactly_at_the_64_bit_out() {
    require_live();
    const OUTS: u32 = 1000;
    let guest = ExitLoopGuest::new_in(Mode::Long, OUTS, 0, 0x80, 0x71);
    // The 64-bit guest's `out dx, al` (EE), after `mov ecx, imm32` (B9, no 0x66 prefix in
    // 64-bit mode), `mov dx, 0x80` (66 BA), `test ecx, ecx` (85 C9), `jz` (74 05).
    assert_eq!(guest.out_rip, 0x100d);
    assert_eq!(guest.code[(guest.out_rip - LOAD_ADDR) as usize], 0xEE);
    assert_ne!(guest.out_rip, ExitLoopGuest::new(OUTS, 0, 0x80, 0x71).out_rip, "not the real-mode guest's RIP");

    let dir = tmpdir();
    let out = dir.path().join("long.kvmprof");
    let (mut vm, mut vm_out) = exit_loop_ready(&["--long-mode", "--outs", &OUTS.to_string()]);
    let mut line = String::new();

    let (mut rec, rec_err) = start_record(&["record", "-o", path_str(&out), "--pid", &vm.id().to_string()]);

    writeln!(vm.stdin.take().unwrap(), "go").unwrap();
    line.clear();
    vm_out.read_line(&mut line).unwrap();
    assert!(vm.wait().unwrap().success(), "kvm-exit-loop failed");
    let printed = json(&line);
    assert_eq!(printed["mode"], "long");
    assert_eq!(printed["out_rip"], format!("{:#x}", guest.out_rip));
    assert_eq!(printed["stats"]["outs"], OUTS as u64);

    let status = rec.wait().unwrap();
    assert!(status.success(), "record failed: {}", rest(rec_err));

    let fin = recording::load(&out).unwrap();
    assert_eq!((fin.meta.exit_keys_full, fin.meta.threads_full), (0, 0), "nothing lost: {:?}", fin.meta);
    assert_eq!(at(&fin, guest.out_rip), OUTS as u64, "exactly N exits at the 64-bit out: {:?}", fin.exits);
    let sites: Vec<_> = fin.exits.iter().filter(|e| e.rip == guest.out_rip).collect();
    assert_eq!(sites.len(), 1, "one exit key at the out: {sites:?}");
    assert_eq!(sites[0].access.port(), Some((Direction::Out, 0x80)), "{sites:?}");
    assert_eq!(at(&fin, guest.hlt_rip), 1);
    assert_eq!(fin.total_exits(), OUTS as u64 + 1, "the outs and the hlt, nothing else: {:?}", fin.exits);

    let v = report_json(&out, &["--by", "rip"]);
    let row = row_at(&v, "rip", &format!("{:#x}", guest.out_rip));
    assert_eq!(row["count"], OUTS as u64);
    assert_eq!((row["port"].as_str(), row["direction"].as_str()), (Some("0x80"), Some("out")));
    assert_eq!(row["reason"], io_reason());
}

/// `kvmprof record -- kvm-exit-loop --long-mode --outs N --ins M`: each exiting instruction
/// of the 64-bit guest at its own RIP, with its exact count.
#[test]
fn long_mode_outs_and_ins_each_at_their_rip() {
    require_live();
    const OUTS: u32 = 1501;
    const INS: u32 = 603;
    let guest = ExitLoopGuest::new_in(Mode::Long, OUTS, INS, 0x80, 0x71);
    let dir = tmpdir();
    let out = dir.path().join("long.kvmprof");
    let (outs, ins) = (OUTS.to_string(), INS.to_string());
    let o = run(KVMPROF, &["record", "-o", path_str(&out), "--", &exit_loop(), "--long-mode", "--outs", &outs, "--ins", &ins]);
    assert!(o.status.success(), "record failed: {}", stderr(&o));
    let v = report_json(&out, &["--by", "rip"]);
    let out_row = row_at(&v, "rip", &format!("{:#x}", guest.out_rip));
    assert_eq!((out_row["count"].as_u64(), out_row["port"].as_str()), (Some(OUTS as u64), Some("0x80")));
    let in_row = row_at(&v, "rip", &format!("{:#x}", guest.in_rip));
    assert_eq!((in_row["count"].as_u64(), in_row["port"].as_str()), (Some(INS as u64), Some("0x71")));
    assert_eq!(row_at(&v, "rip", &format!("{:#x}", guest.hlt_rip))["count"], 1);
    assert_eq!(rows(&v).len(), 3, "{v:#}");
    assert_eq!(v["total_exits"], (OUTS + INS + 1) as u64);
}

/// `kvmprof record -- kvm-exit-loop --long-mode --outs N --pause-then-outs M` (the pause
/// protocol through kvmprof's stdin/stdout): N + M exits at the one 64-bit `out`, two at the
/// pausing `in`.
#[test]
fn long_mode_pause_then_outs_keeps_one_out_rip() {
    require_live();
    const N: u32 = 1200;
    const M: u32 = 700;
    let guest = ExitLoopGuest::paused_in(Mode::Long, N, M, 0x80);
    let dir = tmpdir();
    let out = dir.path().join("paused.kvmprof");
    let mut rec = Command::new(KVMPROF)
        .args(["record", "-o", path_str(&out), "--", &exit_loop(), "--long-mode", "--outs", &N.to_string(), "--pause-then-outs", &M.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut rec_out = BufReader::new(rec.stdout.take().unwrap());
    let mut line = String::new();
    rec_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "paused", "kvm-exit-loop said {line:?}");
    writeln!(rec.stdin.take().unwrap(), "go").unwrap();
    let o = rec.wait_with_output().unwrap();
    assert!(o.status.success(), "record failed: {}", stderr(&o));

    let fin = recording::load(&out).unwrap();
    assert_eq!(at(&fin, guest.out_rip), (N + M) as u64, "{:?}", fin.exits);
    assert_eq!(at(&fin, guest.pause_rip), 2, "two reads of the pause port");
    assert_eq!(at(&fin, guest.hlt_rip), 1);
    assert_eq!(fin.total_exits(), (N + M + 3) as u64);
}
