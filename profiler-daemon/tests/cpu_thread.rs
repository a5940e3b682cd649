//! The per-CPU "traced thread running here" cache of the eBPF programs (`CPU_THREAD`, cleared by
//! `cpu_switch` on `sched_switch`): two guests pinned to one CPU take turns on it while only
//! one is traced. Were a stale entry ever trusted, the other guest's exits (another port) would
//! be counted as the traced one's. Live: needs root, KVM, BPF, tracefs (fails without them).
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command};

use common::*;
use profiler_daemon::model::recording;

const TRACED_OUTS: u32 = 40_000;
const OTHER_OUTS: u32 = 30_000;

/// `taskset -c 0 kvm-exit-loop --wait-for-go --outs N --out-port PORT`, once it said `ready`.
fn pinned_guest(outs: u32, port: &str) -> (Child, BufReader<ChildStdout>) {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", &exit_loop(), "--wait-for-go", "--outs", &outs.to_string(), "--out-port", port]);
    spawn_ready(cmd)
}

#[test]
fn two_guests_sharing_a_cpu_keep_their_own_exits() {
    require_live();
    let dir = tmpdir();
    let file = dir.path().join("traced.kvmprof");
    let (mut traced, mut traced_out) = pinned_guest(TRACED_OUTS, "0x80");
    let (mut other, mut other_out) = pinned_guest(OTHER_OUTS, "0x84");

    let (mut rec, rec_err) = start_record(&["record", "-o", path_str(&file), "--pid", &traced.id().to_string()]);
    let mut line = String::new();

    // Both start together, so their vCPU threads interleave on CPU 0 for the whole run.
    writeln!(traced.stdin.take().unwrap(), "go").unwrap();
    writeln!(other.stdin.take().unwrap(), "go").unwrap();
    for (vm, out, outs) in [(&mut traced, &mut traced_out, TRACED_OUTS), (&mut other, &mut other_out, OTHER_OUTS)] {
        line.clear();
        out.read_line(&mut line).unwrap();
        assert!(vm.wait().unwrap().success(), "kvm-exit-loop failed");
        assert_eq!(json(&line)["stats"]["outs"], outs as u64, "{line}");
    }
    let status = rec.wait().unwrap();
    assert!(status.success(), "record failed: {}", rest(rec_err));

    let p = recording::load(&file).unwrap();
    let port_outs = |port: u16| -> u64 {
        p.exits.iter().filter(|e| e.access.port().is_some_and(|(_, q)| q == port)).map(|e| e.stats.count).sum()
    };
    assert_eq!(port_outs(0x80), TRACED_OUTS as u64, "the traced guest's writes, exactly: {:?}", p.exits);
    assert_eq!(port_outs(0x84), 0, "none of the other guest's writes: {:?}", p.exits);
    assert_eq!(p.total_exits(), TRACED_OUTS as u64 + 1, "its outs and its hlt: {:?}", p.exits);
}
