//! `kvmprof record` on a real KVM guest with exactly known exits, through the real eBPF
//! programs and tracepoints. Needs root, KVM, BPF and tracefs: fails without them.
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use profiler_daemon::exit_loop::ExitLoopGuest;
use profiler_daemon::recording::Recording;
use profiler_daemon::tracer::Source;

const OUTS: u32 = 3001;
const INS: u32 = 1207;

fn record_exit_loop(dir: &Path, extra: &[&str]) -> std::path::PathBuf {
    let out = dir.join("loop.kvmprof");
    let (outs, ins) = (OUTS.to_string(), INS.to_string());
    let mut args = vec!["record", "-o", path_str(&out)];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", EXIT_LOOP, "--outs", &outs, "--ins", &ins, "--out-port", "0x80", "--in-port", "0x71"]);
    let o = run(KVMPROF, &args);
    assert!(o.status.success(), "record failed: {}", stderr(&o));
    out
}

#[test]
fn exact_exit_counts_per_rip_with_reason_port_and_time() {
    require_live();
    let dir = tmpdir();
    let rec = record_exit_loop(dir.path(), &[]);
    let guest = ExitLoopGuest::new(OUTS, INS, 0x80, 0x71);
    let v = report_json(&rec, &["--by", "rip"]);
    assert_eq!(v["source"], Source::detect().name());

    let out = row_at(&v, "rip", &format!("{:#x}", guest.out_rip));
    assert_eq!(out["count"], OUTS as u64);
    assert_eq!(out["reason"], "IO");
    assert_eq!(out["port"], "0x80");
    assert_eq!(out["direction"], "out");
    assert!(out["time_ns"].as_u64().unwrap() > 0);

    let inn = row_at(&v, "rip", &format!("{:#x}", guest.in_rip));
    assert_eq!(inn["count"], INS as u64);
    assert_eq!(inn["reason"], "IO");
    assert_eq!(inn["port"], "0x71");
    assert_eq!(inn["direction"], "in");
    assert!(inn["time_ns"].as_u64().unwrap() > 0);

    let hlt = row_at(&v, "rip", &format!("{:#x}", guest.hlt_rip));
    assert_eq!(hlt["count"], 1);
    assert_eq!(hlt["reason"], "HLT");
    assert_eq!(rows(&v).len(), 3, "only the guest's three exiting instructions: {v:#}");
    assert_eq!(v["total_exits"], (OUTS + INS + 1) as u64);
    for r in rows(&v) {
        assert!(r["function"].is_null());
        assert!(r["percent"].as_f64().unwrap() >= 0.0);
    }
}

#[test]
fn groupings_by_port_reason_and_vcpu_agree() {
    require_live();
    let dir = tmpdir();
    let rec = record_exit_loop(dir.path(), &[]);
    let by_port = report_json(&rec, &["--by", "port"]);
    assert_eq!(row_at(&by_port, "port", "0x80")["count"], OUTS as u64);
    assert_eq!(row_at(&by_port, "port", "0x71")["count"], INS as u64);
    assert_eq!(rows(&by_port).len(), 2);

    let by_reason = report_json(&rec, &["--by", "reason"]);
    assert_eq!(row_at(&by_reason, "reason", "IO")["count"], (OUTS + INS) as u64);
    assert_eq!(row_at(&by_reason, "reason", "HLT")["count"], 1);

    let by_vcpu = report_json(&rec, &["--by", "vcpu"]);
    assert_eq!(rows(&by_vcpu).len(), 1, "one vCPU thread");
    assert_eq!(rows(&by_vcpu)[0]["count"], (OUTS + INS + 1) as u64);
    assert!(rows(&by_vcpu)[0]["tid"].as_u64().unwrap() > 0);

    let csv = stdout(&run(KVMPROF, &["report", path_str(&rec), "--format", "csv", "--by", "port"]));
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("source,rip,function,reason,port"));
    assert!(lines.iter().any(|l| l.contains(",0x80,out,") && l.contains(&format!(",{OUTS},"))), "{csv}");

    let table = stdout(&run(KVMPROF, &["report", path_str(&rec)]));
    assert!(table.starts_with("source: "), "{table}");
    assert!(table.contains("out 0x80") && table.contains(&OUTS.to_string()), "{table}");
}

#[test]
fn streamed_records_match_the_aggregates() {
    require_live();
    let dir = tmpdir();
    let rec = Recording::load(&record_exit_loop(dir.path(), &["--records"])).unwrap();
    assert!(rec.meta.records_requested);
    assert_eq!(rec.meta.records_dropped, 0);
    let records = rec.records.as_ref().expect("records");
    let total: u64 = rec.exits.iter().map(|e| e.count).sum();
    assert_eq!(records.len() as u64, total);
    for (i, row) in rec.exits.iter().enumerate() {
        let mine: Vec<_> = records.iter().filter(|r| r[2] == i as u64).collect();
        assert_eq!(mine.len() as u64, row.count, "records of exit {i}");
        assert_eq!(mine.iter().map(|r| r[1]).sum::<u64>(), row.total_ns, "durations of exit {i}");
    }
    let starts: Vec<u64> = records.iter().map(|r| r[0]).collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "records are in time order");
}

#[test]
fn follows_a_running_vm_by_pid() {
    require_live();
    let dir = tmpdir();
    // A guest that keeps exiting long enough to be followed.
    let mut child = Command::new(EXIT_LOOP).args(["--outs", "100000000"]).stdout(Stdio::null()).spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while profiler_daemon::record::check_vm_pid(pid).is_err() {
        assert!(Instant::now() < deadline, "the guest never created its VM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = dir.path().join("pid.kvmprof");
    let o = run(KVMPROF, &["record", "-o", path_str(&out), "--pid", &pid.to_string(), "--duration", "1"]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let rec = Recording::load(&out).unwrap();
    assert_eq!(rec.meta.pid, Some(pid));
    let guest = ExitLoopGuest::new(1, 0, 0x80, 0x71);
    assert_eq!(rec.exits.len(), 1, "only the out loop runs: {:?}", rec.exits);
    assert_eq!(rec.exits[0].rip, format!("{:#x}", guest.out_rip));
    assert_eq!(rec.exits[0].tgid, pid);
    assert!(rec.exits[0].count > 1000, "a second of a tight out loop: {}", rec.exits[0].count);
}

#[test]
fn hw_and_emulated_programs_pass_the_verifier_and_attach() {
    require_live();
    let o = run(KVMPROF, &["check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("hw: loaded and attached to kvm_exit, kvm_entry"), "{s}");
    assert!(s.contains("emulated: loaded and attached to kvm_emulate_insn"), "{s}");
}

#[test]
fn a_pid_that_is_not_a_vm_is_refused() {
    require_live();
    let dir = tmpdir();
    let out = dir.path().join("x.kvmprof");
    let o = run(KVMPROF, &["record", "-o", path_str(&out), "--pid", "1", "--duration", "1"]);
    assert_one_line_error(&o, "is not a KVM VM");
    let o = run(KVMPROF, &["record", "-o", path_str(&out), "--pid", "999999999", "--duration", "1"]);
    assert_one_line_error(&o, "no process with PID 999999999");
    let o = run(KVMPROF, &["record", "-o", path_str(&out), "--", "/no/such/vmm"]);
    assert_one_line_error(&o, "no such executable");
    assert!(!out.exists(), "no recording is written for a refused run");
}

#[test]
fn not_root_is_refused() {
    require_live();
    let dir = tmpdir();
    let out = dir.path().join("x.kvmprof");
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", KVMPROF, "record", "-o", path_str(&out), "--", EXIT_LOOP])
        .output()
        .unwrap();
    assert_one_line_error(&o, "needs root");
}

#[test]
fn unmountable_tracefs_says_what_to_run() {
    require_live();
    let dir = tmpdir();
    let out = dir.path().join("x.kvmprof");
    // A private mount namespace where /sys/kernel/tracing is an empty tmpfs, and a root without
    // CAP_SYS_ADMIN, so mounting tracefs fails as it does in a locked-down container.
    let script = format!(
        "mount -t tmpfs none /sys/kernel/tracing && exec setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin {KVMPROF} record -o {} -- {EXIT_LOOP}",
        path_str(&out)
    );
    let o = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    assert_one_line_error(&o, "run: mount -t tracefs nodev /sys/kernel/tracing");
}
