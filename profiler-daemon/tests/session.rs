//! The live Session on real guests: `snapshot()` reads the in-kernel maps while every program
//! stays attached, `finish()` gives the rest; VMs started after the session are picked up and
//! their ended threads marked. Needs root, KVM, BPF and tracefs: fails without them.
mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;
use kvm_exit_loop::ExitLoopGuest;
use profiler_daemon::live::{self, detect_source, Session, SessionConfig, Target};
use profiler_daemon::model::Profile;

/// Exits counted at `rip`.
fn at(p: &Profile, rip: u64) -> u64 {
    p.exits.iter().filter(|e| e.rip == rip).map(|e| e.stats.count).sum()
}

/// The BPF links this test process holds, as the kernel lists them in /proc/self/fdinfo:
/// `(link id, program id)`. A detached program's link is gone from the list.
fn our_links() -> BTreeSet<(u64, u64)> {
    let mut links = BTreeSet::new();
    for fd in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else { continue };
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(link), Some(prog)) = (field("link_id:"), field("prog_id:")) {
            links.insert((link, prog));
        }
    }
    links
}

/// The tests of this file run one at a time: each counts the BPF links of this process.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn start(target: Target) -> Session {
    let tfs = live::tracefs::ensure_mounted().expect("tracefs");
    Session::start(&tfs, SessionConfig { source: detect_source(), target, records: false, command: None }).expect("load and attach")
}

#[test]
fn snapshot_during_a_pause_shows_exactly_the_exits_so_far() {
    require_live();
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const N: u32 = 2500;
    const M: u32 = 1700;
    let mut child = Command::new(exit_loop())
        .args(["--outs", &N.to_string(), "--pause-then-outs", &M.to_string(), "--wait-for-go"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("kvm-exit-loop");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut expect_line = |want: &str| {
        line.clear();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), want, "kvm-exit-loop said {line:?}");
    };
    expect_line("ready");
    let mut session = start(Target::Process(child.id()));
    writeln!(stdin, "go").unwrap();
    expect_line("paused");

    let links = our_links();
    assert!(links.len() >= 3, "the exit programs are attached: {links:?}");
    let snap = session.snapshot().expect("snapshot");
    assert_eq!(our_links(), links, "snapshot() detached or attached a program");
    let guest = ExitLoopGuest::paused(N, M, 0x80);
    assert_eq!(at(&snap, guest.out_rip), N as u64, "snapshot during the pause: {:?}", snap.exits);
    assert_eq!(at(&snap, guest.hlt_rip), 0, "the guest has not halted yet");
    // A second snapshot changes nothing while the guest is paused: reading resets nothing.
    assert_eq!(at(&session.snapshot().unwrap(), guest.out_rip), N as u64);

    writeln!(stdin, "go").unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "kvm-exit-loop failed: {status}");
    assert_eq!(our_links(), links, "nothing was detached before finish()");
    let fin = session.finish().expect("finish");
    assert!(our_links().is_empty(), "finish() detaches every program: {:?}", our_links());
    assert_eq!(at(&fin, guest.out_rip), (N + M) as u64, "{:?}", fin.exits);
    assert_eq!(at(&fin, guest.pause_rip), 2, "two reads of the pause port");
    assert_eq!(at(&fin, guest.hlt_rip), 1);
    assert_eq!(fin.total_exits(), (N + M + 3) as u64);
}

#[test]
fn a_host_wide_session_picks_up_a_vm_started_later_and_marks_its_thread_ended() {
    require_live();
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut session = start(Target::AllVms);
    let before = session.snapshot().unwrap();
    let o = Command::new(exit_loop()).args(["--outs", "777"]).output().expect("kvm-exit-loop");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let out_rip = u64::from_str_radix(stats["out_rip"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let snap = session.snapshot().unwrap();
    let fin = session.finish().unwrap();
    // Other VMs may run on the host meanwhile: look only at the new process's exits.
    let vm_pid = fin.exits.iter().filter(|e| e.rip == out_rip && e.stats.count == 777).map(|e| e.tgid).next();
    let vm_pid = vm_pid.unwrap_or_else(|| panic!("no exit site with the guest's 777 outs: {:?}", fin.exits));
    assert!(!before.exits.iter().any(|e| e.tgid == vm_pid), "the VM did not exist before");
    let mine: Vec<_> = snap.exits.iter().filter(|e| e.tgid == vm_pid).collect();
    assert_eq!(mine.iter().filter(|e| e.rip == out_rip).map(|e| e.stats.count).sum::<u64>(), 777);
    let threads: Vec<_> = snap.threads.values().filter(|t| t.tgid == vm_pid).collect();
    assert_eq!(threads.len(), 1, "one vCPU thread: {:?}", snap.threads);
    assert!(threads[0].ended, "the VM has exited, so its thread is marked ended: {:?}", threads[0]);
    assert_eq!(fin.meta.pid, None, "a host-wide session has no single PID");
}

/// Runs `kvm-exit-loop --port-sweep` over `ports` ports under a session: the final profile.
fn sweep(ports: u32) -> Profile {
    // `_stdout` stays open: the guest prints its stats there when it halts.
    let (mut child, _stdout) = exit_loop_ready(&["--port-sweep", "--outs", &ports.to_string(), "--out-port", "0x0"]);
    let session = start(Target::Process(child.id()));
    writeln!(child.stdin.take().unwrap(), "go").unwrap();
    assert!(child.wait().unwrap().success());
    session.finish().unwrap()
}

/// Ports with exactly one exit at the sweep's `out`.
fn ports_counted_once(p: &Profile, ports: u32) -> BTreeSet<u16> {
    let guest = ExitLoopGuest::sweep(ports, 0);
    p.exits.iter().filter(|e| e.rip == guest.out_rip && e.stats.count == 1).filter_map(|e| e.access.port()).map(|(_, p)| p).collect()
}

/// Many distinct exit sites in a burst: every one counted exactly once, with its time
/// histogram. (A map that allocates its entries in the tracepoint lost a sixth of them here.)
#[test]
fn thousands_of_new_exit_sites_in_a_burst_are_each_counted_once() {
    require_live();
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const PORTS: u32 = 5000;
    let fin = sweep(PORTS);
    assert_eq!((fin.meta.exit_keys_full, fin.meta.threads_full), (0, 0), "nothing lost");
    assert_eq!(ports_counted_once(&fin, PORTS).len(), PORTS as usize, "one exit site per port, each counted once");
    assert_eq!(fin.total_exits(), PORTS as u64 + 1, "the outs and the hlt");
    assert!(fin.exits.iter().all(|e| e.stats.hist.iter().sum::<u64>() == e.stats.count), "every exit has its histogram");
}

/// More exit sites than the in-kernel exit map holds (profiler_common::maps::EXITS_MAX_ENTRIES):
/// the rest are still counted exactly, in the overflow map, without histograms, and the report
/// says so. (A QEMU boot's VGA clear makes ~7 800 MMIO sites before the guest's own exits.)
#[test]
fn exit_sites_beyond_the_map_are_still_counted_exactly() {
    require_live();
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const PORTS: u32 = 12000;
    const { assert!(PORTS > profiler_common::maps::EXITS_MAX_ENTRIES) };
    let fin = sweep(PORTS);
    assert_eq!((fin.meta.exit_keys_full, fin.meta.threads_full), (0, 0), "nothing lost");
    assert_eq!(ports_counted_once(&fin, PORTS).len(), PORTS as usize, "one exit site per port, each counted once");
    assert_eq!(fin.total_exits(), PORTS as u64 + 1);
    let timed: u64 = fin.exits.iter().map(|e| e.stats.hist.iter().sum::<u64>()).sum();
    let with_hist = fin.exits.iter().filter(|e| e.stats.hist.iter().sum::<u64>() > 0).count();
    // The full map's keys keep their histograms, and so does the final HLT: still open at the
    // end, it is charged in user space by finish().
    assert_eq!(with_hist as u32, profiler_common::maps::EXITS_MAX_ENTRIES + 1, "keys with histograms");
    assert!(timed < fin.total_exits());
    let rep = profiler_daemon::analysis::report::build(&fin, profiler_daemon::analysis::report::GroupBy::Reason, &|_| None);
    let without = fin.total_exits() - timed;
    assert!(
        rep.notes.contains(&profiler_daemon::analysis::report::Note::PartialHistograms { without, total: fin.total_exits() }),
        "{:?}",
        rep.notes
    );
}
