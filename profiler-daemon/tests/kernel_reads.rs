//! The two ways the eBPF programs read kernel memory (profiler-ebpf `kernel_read`, daemon
//! `live::kfunc`): direct loads through `bpf_rdonly_cast`, which this kernel supports and every
//! other live test therefore runs, and the `bpf_probe_read_kernel` fallback for kernels that do
//! not, forced here with KVMPROF_HELPER_READS=1. Both must count the same exits exactly, at the
//! same RIPs, in real mode (which also reads the CS base) and in 64-bit mode. Live: needs root,
//! KVM, BPF, tracefs (fails without them).
mod common;

use std::process::Command;

use common::*;
use kvm_exit_loop::{ExitLoopGuest, Mode};

const OUTS: u32 = 1207;
const INS: u32 = 311;

/// `kvmprof record -- kvm-exit-loop [--long-mode] --outs OUTS --ins INS`, with the kernel reads
/// forced to the helper when `helper`; the report's rows by RIP.
fn record(mode: Mode, helper: bool) -> serde_json::Value {
    let dir = tmpdir();
    let out = dir.path().join("r.kvmprof");
    let (outs, ins) = (OUTS.to_string(), INS.to_string());
    let exit_loop = exit_loop();
    let mut args = vec!["record", "-o", path_str(&out), "--", &exit_loop, "--outs", &outs, "--ins", &ins];
    if mode == Mode::Long {
        args.push("--long-mode");
    }
    let mut cmd = Command::new(KVMPROF);
    cmd.args(&args);
    if helper {
        cmd.env("KVMPROF_HELPER_READS", "1");
    } else {
        cmd.env_remove("KVMPROF_HELPER_READS");
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "record ({mode:?}, helper {helper}) failed: {}", stderr(&o));
    report_json(&out, &["--by", "rip"])
}

fn check_counts(v: &serde_json::Value, guest: &ExitLoopGuest, what: &str) {
    let out_row = row_at(v, "rip", &format!("{:#x}", guest.out_rip));
    assert_eq!((out_row["count"].as_u64(), out_row["port"].as_str()), (Some(OUTS as u64), Some("0x80")), "{what}: {v:#}");
    let in_row = row_at(v, "rip", &format!("{:#x}", guest.in_rip));
    assert_eq!((in_row["count"].as_u64(), in_row["port"].as_str()), (Some(INS as u64), Some("0x71")), "{what}: {v:#}");
    assert_eq!(row_at(v, "rip", &format!("{:#x}", guest.hlt_rip))["count"], 1, "{what}");
    assert_eq!(rows(v).len(), 3, "{what}: {v:#}");
    assert_eq!(v["total_exits"], (OUTS + INS + 1) as u64, "{what}");
}

#[test]
fn this_kernel_gets_direct_reads_and_the_variable_forces_the_helper() {
    require_live();
    let o = run(KVMPROF, &["check", "--source", "emulated"]);
    assert!(o.status.success(), "check failed: {}", stderr(&o));
    assert!(stdout(&o).contains("kernel memory reads: direct loads (bpf_rdonly_cast)"), "{}", stdout(&o));
    let o = Command::new(KVMPROF).args(["check", "--source", "emulated"]).env("KVMPROF_HELPER_READS", "1").output().unwrap();
    assert!(o.status.success(), "check with helper reads failed: {}", stderr(&o));
    assert!(stdout(&o).contains("kernel memory reads: bpf_probe_read_kernel"), "{}", stdout(&o));
}

#[test]
fn direct_and_helper_reads_count_the_same_exits_in_real_mode() {
    require_live();
    let guest = ExitLoopGuest::new(OUTS, INS, 0x80, 0x71);
    check_counts(&record(Mode::Real, false), &guest, "real mode, direct reads");
    check_counts(&record(Mode::Real, true), &guest, "real mode, helper reads");
}

#[test]
fn direct_and_helper_reads_count_the_same_exits_in_long_mode() {
    require_live();
    let guest = ExitLoopGuest::new_in(Mode::Long, OUTS, INS, 0x80, 0x71);
    check_counts(&record(Mode::Long, false), &guest, "long mode, direct reads");
    check_counts(&record(Mode::Long, true), &guest, "long mode, helper reads");
}
