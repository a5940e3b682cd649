//! `kvmprof record` on a real KVM guest with exactly known exits, through the real eBPF
//! programs and tracepoints. Needs root, KVM, BPF and tracefs: fails without them.
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kvm_exit_loop::ExitLoopGuest;
use profiler_daemon::live::detect_source;
use profiler_daemon::model::{recording, Access, Direction, ThreadInfo};

// 3004 + 1207 exits re-enter the guest (the final HLT does not): 4211 records, not a multiple
// of the eBPF's record batch (8), so the last 3 come from the batch the daemon reads at the end.
const OUTS: u32 = 3004;
const INS: u32 = 1207;
const _: () = assert!(!((OUTS + INS) as usize).is_multiple_of(profiler_common::RECORD_BATCH_LEN));

fn record_exit_loop(dir: &Path, extra: &[&str]) -> std::path::PathBuf {
    let out = dir.join("loop.kvmprof");
    let (outs, ins) = (OUTS.to_string(), INS.to_string());
    let mut args = vec!["record", "-o", path_str(&out)];
    args.extend_from_slice(extra);
    let exit_loop = exit_loop();
    args.extend_from_slice(&["--", &exit_loop, "--outs", &outs, "--ins", &ins, "--out-port", "0x80", "--in-port", "0x71"]);
    let o = run(KVMPROF, &args);
    assert!(o.status.success(), "record failed: {}", stderr(&o));
    out
}

/// `percent` of every row is its share of all exit time: `100 * time_ns / total_time_ns`, and
/// the rows of a report that shows every exit add up to 100.
fn assert_percents_are_time_shares(v: &serde_json::Value) {
    let total = v["total_time_ns"].as_u64().unwrap();
    assert!(total > 0, "exits take time: {v:#}");
    assert_eq!(rows(v).iter().map(|r| r["time_ns"].as_u64().unwrap()).sum::<u64>(), total, "rows add up to the total time: {v:#}");
    let mut sum = 0.0;
    for r in rows(v) {
        let (pct, t) = (r["percent"].as_f64().unwrap(), r["time_ns"].as_u64().unwrap());
        let want = 100.0 * t as f64 / total as f64;
        assert!((pct - want).abs() <= 1e-9, "percent {pct} is not 100 * {t} / {total} = {want}: {r:#}");
        sum += pct;
    }
    assert!((sum - 100.0).abs() <= 1e-9, "percents add up to {sum}, not 100: {v:#}");
}

/// What `report --by vcpu` must say for the guest's vCPU: the tracepoint's vCPU index on a
/// source that names it (hw: `kvm_exit`'s vcpu_id; kvm-exit-loop has one vCPU, index 0), else
/// the index read from the thread's name, which for kvm-exit-loop (a single-threaded VMM: its
/// vCPU runs on the main thread, named after the program) is none.
fn expected_vcpu(profile: &profiler_daemon::model::Profile, tid: u32) -> Option<u32> {
    if source_names_vcpu() {
        Some(0)
    } else {
        let t = &profile.threads[&tid];
        ThreadInfo::from_comm(t.tgid, t.comm.as_bytes()).vcpu
    }
}

#[test]
fn exact_exit_counts_per_rip_with_reason_port_and_time() {
    require_live();
    let dir = tmpdir();
    let rec = record_exit_loop(dir.path(), &[]);
    let guest = ExitLoopGuest::new(OUTS, INS, 0x80, 0x71);
    let v = report_json(&rec, &["--by", "rip"]);
    assert_eq!(v["source"], detect_source().name());
    // Nothing lost, and only the final HLT still open when recording stopped.
    let meta = recording::load(&rec).unwrap().meta;
    assert_eq!((meta.exit_keys_full, meta.threads_full, meta.unfinished_exits), (0, 0, 1), "{meta:?}");

    let out = row_at(&v, "rip", &format!("{:#x}", guest.out_rip));
    assert_eq!(out["count"], OUTS as u64);
    assert_eq!(out["reason"], io_reason());
    assert_eq!(out["port"], "0x80");
    assert_eq!(out["direction"], "out");
    assert!(out["time_ns"].as_u64().unwrap() > 0);

    let inn = row_at(&v, "rip", &format!("{:#x}", guest.in_rip));
    assert_eq!(inn["count"], INS as u64);
    assert_eq!(inn["reason"], io_reason());
    assert_eq!(inn["port"], "0x71");
    assert_eq!(inn["direction"], "in");
    assert!(inn["time_ns"].as_u64().unwrap() > 0);

    let hlt = row_at(&v, "rip", &format!("{:#x}", guest.hlt_rip));
    assert_eq!(hlt["count"], 1);
    assert_eq!(hlt["reason"], hlt_reason());
    assert!(hlt["port"].is_null() && hlt["direction"].is_null(), "a HLT exit has no port: {hlt:#}");
    assert_eq!(rows(&v).len(), 3, "only the guest's three exiting instructions: {v:#}");
    assert_eq!(v["total_exits"], (OUTS + INS + 1) as u64);
    for r in rows(&v) {
        assert!(r["function"].is_null());
        // mean = time / count, in whole ns.
        assert_eq!(r["mean_ns"].as_u64().unwrap(), r["time_ns"].as_u64().unwrap() / r["count"].as_u64().unwrap(), "{r:#}");
    }
    assert_percents_are_time_shares(&v);
}

#[test]
fn groupings_by_port_reason_and_vcpu_agree() {
    require_live();
    let dir = tmpdir();
    let rec = record_exit_loop(dir.path(), &[]);
    let by_rip = report_json(&rec, &["--by", "rip"]);
    let guest = ExitLoopGuest::new(OUTS, INS, 0x80, 0x71);
    let time_at = |rip: u64| row_at(&by_rip, "rip", &format!("{rip:#x}"))["time_ns"].as_u64().unwrap();

    let by_port = report_json(&rec, &["--by", "port"]);
    let (p80, p71) = (row_at(&by_port, "port", "0x80"), row_at(&by_port, "port", "0x71"));
    assert_eq!((p80["count"].as_u64(), p80["direction"].as_str()), (Some(OUTS as u64), Some("out")));
    assert_eq!((p71["count"].as_u64(), p71["direction"].as_str()), (Some(INS as u64), Some("in")));
    // Each port has one RIP: the same exits, so the same time.
    assert_eq!(p80["time_ns"].as_u64().unwrap(), time_at(guest.out_rip));
    assert_eq!(p71["time_ns"].as_u64().unwrap(), time_at(guest.in_rip));
    assert_eq!(rows(&by_port).len(), 2);
    assert!(rows(&by_port).iter().all(|r| r["reason"] == io_reason()), "{by_port:#}");

    let by_reason = report_json(&rec, &["--by", "reason"]);
    let io = row_at(&by_reason, "reason", io_reason());
    assert_eq!(io["count"], (OUTS + INS) as u64);
    assert_eq!(io["time_ns"].as_u64().unwrap(), time_at(guest.out_rip) + time_at(guest.in_rip));
    let hlt = row_at(&by_reason, "reason", hlt_reason());
    assert_eq!(hlt["count"], 1);
    assert_eq!(hlt["time_ns"].as_u64().unwrap(), time_at(guest.hlt_rip));
    assert_eq!(rows(&by_reason).len(), 2, "{by_reason:#}");
    assert_percents_are_time_shares(&by_reason);

    let by_vcpu = report_json(&rec, &["--by", "vcpu"]);
    assert_eq!(rows(&by_vcpu).len(), 1, "one vCPU thread");
    let row = &rows(&by_vcpu)[0];
    assert_eq!(row["count"], (OUTS + INS + 1) as u64);
    // One row holding every exit holds all exit time.
    assert_eq!(row["time_ns"], by_vcpu["total_time_ns"]);
    assert_eq!(row["percent"].as_f64(), Some(100.0), "{row:#}");
    let tid = row["tid"].as_u64().unwrap() as u32;
    assert!(tid > 0);
    let profile = recording::load(&rec).unwrap();
    assert!(profile.exits.iter().all(|e| e.tid == tid), "every exit is the vCPU thread's");
    let want = expected_vcpu(&profile, tid);
    assert_eq!(row["vcpu"].as_u64().map(|v| v as u32), want, "vcpu on the {} source: {row:#}", detect_source().name());
    for e in &profile.exits {
        // The exit itself carries the index only when the tracepoint names it.
        assert_eq!(e.vcpu, if source_names_vcpu() { Some(0) } else { None }, "{e:?}");
        assert_eq!(profile.vcpu_of(e), want, "{e:?}");
    }

    let csv = stdout(&run(KVMPROF, &["report", path_str(&rec), "--format", "csv", "--by", "port"]));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "source,rip,function,reason,port,direction,vcpu,tid,count,time_ns,percent,mean_ns,p50_ns,p99_ns");
    assert_eq!(lines.len(), 3, "header and two ports: {csv}");
    let p80_line = lines.iter().find(|l| l.contains(",0x80,out,")).unwrap_or_else(|| panic!("no 0x80 row: {csv}"));
    let cells: Vec<&str> = p80_line.split(',').collect();
    assert_eq!(cells[0], detect_source().name(), "{p80_line}");
    assert_eq!(cells[3], io_reason(), "{p80_line}");
    assert_eq!(cells[8], OUTS.to_string(), "{p80_line}");
    assert_eq!(cells[9], p80["time_ns"].as_u64().unwrap().to_string(), "{p80_line}");

    let table = stdout(&run(KVMPROF, &["report", path_str(&rec)]));
    assert!(table.starts_with(&format!("source: {}", detect_source().name())), "{table}");
    let out_line = table.lines().find(|l| l.starts_with(&format!("{:#x} ", guest.out_rip))).unwrap_or_else(|| panic!("no out row: {table}"));
    assert!(out_line.contains("out 0x80") && out_line.split_whitespace().nth(1) == Some(OUTS.to_string().as_str()), "{out_line}");
    assert!(table.contains("p50/p99: from a log-linear histogram (8 buckets per power of two: within 6.25%)"), "{table}");
}

#[test]
fn streamed_records_match_the_aggregates() {
    require_live();
    let dir = tmpdir();
    let path = record_exit_loop(dir.path(), &["--records"]);
    let rec = recording::load(&path).unwrap();
    assert!(rec.meta.records_requested);
    assert_eq!(rec.meta.records_dropped, 0);
    // The records went to the stream file beside the recording as they arrived.
    let stream = rec.records_file.as_ref().expect("a record stream file");
    assert_eq!(stream.path, recording_stream_path(&path));
    assert!(rec.records.is_none(), "no record list in the recording itself");
    assert_eq!((stream.records, stream.dropped()), (rec.total_exits(), 0));
    let records = recording::records(&rec).unwrap();
    assert_eq!(records.len() as u64, rec.total_exits());
    assert_eq!(rec.total_exits(), (OUTS + INS + 1) as u64);
    // Exactly the guest's exits, in its order: the outs, the ins, the final HLT.
    let guest = ExitLoopGuest::new(OUTS, INS, 0x80, 0x71);
    let rips: Vec<u64> = records.iter().map(|r| rec.exits[r.exit].rip).collect();
    let want: Vec<u64> =
        std::iter::repeat_n(guest.out_rip, OUTS as usize).chain(std::iter::repeat_n(guest.in_rip, INS as usize)).chain([guest.hlt_rip]).collect();
    assert!(rips == want, "records are the guest's exits in order");
    assert_eq!(records.iter().map(|r| r.duration_ns).sum::<u64>(), rec.total_time_ns(), "record durations add up to the aggregate time");
    for (i, e) in rec.exits.iter().enumerate() {
        let mine: Vec<_> = records.iter().filter(|r| r.exit == i).collect();
        assert_eq!(mine.len() as u64, e.stats.count, "records of exit {i}");
        assert_eq!(mine.iter().map(|r| r.duration_ns).sum::<u64>(), e.stats.total_ns, "durations of exit {i}");
        // Each record's duration is in the histogram bucket the kernel counted it in.
        let mut hist = [0u64; profiler_common::HIST_BUCKETS];
        for r in &mine {
            hist[profiler_common::hist_bucket(r.duration_ns)] += 1;
        }
        assert_eq!(hist, e.stats.hist, "histogram of exit {i}");
    }
    // One exit ends before the next begins (one vCPU).
    assert!(records.windows(2).all(|w| w[0].start_ns + w[0].duration_ns <= w[1].start_ns), "records are in time order");
    let v = report_json(&path, &[]);
    assert_eq!((v["records"]["kept"].as_u64(), v["records"]["dropped"].as_u64()), (Some(rec.total_exits()), Some(0)), "{v:#}");
}

fn recording_stream_path(rec: &Path) -> std::path::PathBuf {
    profiler_daemon::model::record_stream::path_for(rec)
}

/// A 4 KiB ring buffer (56 records) drained every 20 ms cannot keep up with a guest making
/// ~100 000 exits per second: the records that did not fit are counted, per CPU, exactly.
#[test]
fn a_tiny_ring_buffer_counts_every_dropped_record_and_the_report_says_so() {
    require_live();
    let dir = tmpdir();
    let out = dir.path().join("tiny.kvmprof");
    let outs = 20_000u32;
    let o = run(KVMPROF, &["record", "--records", "--records-buffer", "4096", "-o", path_str(&out), "--", &exit_loop(), "--outs", &outs.to_string()]);
    assert!(o.status.success(), "record failed: {}", stderr(&o));
    let rec = recording::load(&out).unwrap();
    assert_eq!(rec.total_exits(), outs as u64 + 1, "the aggregate counts every exit");
    let stream = rec.records_file.clone().expect("a record stream");
    let records = recording::records(&rec).unwrap();
    let dropped = rec.meta.records_dropped;
    assert!(dropped > 0, "a 4 KiB ring must overflow: {stream:?}");
    assert_eq!(stream.dropped(), dropped, "the per-CPU counts add up to the total");
    assert_eq!(records.len() as u64 + dropped, rec.total_exits(), "every exit is either a record or counted as dropped");
    assert_eq!(stream.records, records.len() as u64);
    assert!(stderr(&o).contains(&format!("{dropped} records did not fit in the ring buffer")), "{}", stderr(&o));
    let table = stdout(&run(KVMPROF, &["report", path_str(&out)]));
    let note = format!("note: {dropped} of {} exits are missing from the streamed records", rec.total_exits());
    assert!(table.contains(&note), "{note:?} in {table}");
    let v = report_json(&out, &[]);
    assert_eq!(v["records"]["dropped"].as_u64(), Some(dropped), "{v:#}");
    assert_eq!(v["records"]["kept"].as_u64(), Some(records.len() as u64), "{v:#}");
    let per_cpu: Vec<u64> = v["records"]["dropped_per_cpu"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).collect();
    assert_eq!(per_cpu, stream.dropped_per_cpu);
    // Sizes that are not a power of two of at least a page are refused before anything runs.
    for bad in ["1000", "6144", "0"] {
        let o = run(KVMPROF, &["record", "--records", "--records-buffer", bad, "-o", path_str(&out), "--", &exit_loop()]);
        assert!(!o.status.success() && stderr(&o).contains("is not a ring buffer size"), "{bad}: {}", stderr(&o));
    }
}

#[test]
fn follows_a_running_vm_by_pid() {
    require_live();
    let dir = tmpdir();
    // A guest that keeps exiting long enough to be followed.
    let mut child = Command::new(exit_loop()).args(["--outs", "100000000"]).stdout(Stdio::null()).spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while profiler_daemon::live::targets::check_vm_pid(pid).is_err() {
        assert!(Instant::now() < deadline, "the guest never created its VM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = dir.path().join("pid.kvmprof");
    let o = run(KVMPROF, &["record", "-o", path_str(&out), "--pid", &pid.to_string(), "--duration", "1"]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let rec = recording::load(&out).unwrap();
    assert_eq!(rec.meta.pid, Some(pid));
    assert_eq!(rec.meta.source, detect_source());
    let guest = ExitLoopGuest::new(1, 0, 0x80, 0x71);
    // Only the out loop runs. Following a running VM, the programs may attach in the middle
    // of one exit: on the emulated source, after its `kvm_pio` (which names the port) and
    // before its `kvm_userspace_exit`. That one exit is then seen without its port: at most
    // one such exit, at the same RIP, with the same reason.
    let (with_port, straddling): (Vec<_>, Vec<_>) = rec.exits.iter().partition(|e| e.access != Access::None);
    assert_eq!(with_port.len(), 1, "only the out loop runs: {:?}", rec.exits);
    if let [s] = straddling.as_slice() {
        assert!(!source_names_vcpu(), "kvm_exit names the exit before its port is traced: {s:?}");
        assert_eq!((s.rip, s.reason.name(), s.stats.count), (guest.out_rip, io_reason().to_string(), 1), "{s:?}");
    } else {
        assert!(straddling.is_empty(), "{:?}", rec.exits);
    }
    let e = with_port[0];
    assert_eq!(e.rip, guest.out_rip);
    assert_eq!(e.reason.name(), io_reason());
    assert_eq!(e.access, Access::Port { dir: Direction::Out, port: 0x80 });
    assert_eq!(e.tgid, pid);
    assert_eq!(e.tid, pid, "kvm-exit-loop runs its vCPU on its main thread");
    assert_eq!(rec.vcpu_of(e), expected_vcpu(&rec, e.tid));
    assert!(e.stats.count > 1000, "a second of a tight out loop: {}", e.stats.count);
    assert_eq!(e.stats.hist.iter().sum::<u64>(), e.stats.count, "every exit is in the histogram");
}

#[test]
fn hw_and_emulated_programs_pass_the_verifier_and_attach() {
    require_live();
    let o = run(KVMPROF, &["check"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("hw: loaded and attached to kvm_exit, kvm_exit (raw), sched_switch (raw), kvm_entry (raw), kvm_pio (raw), kvm_mmio (raw)"), "{s}");
    assert!(s.contains("emulated: loaded and attached to kvm_emulate_insn"), "{s}");
    assert!(s.lines().any(|l| l == format!("detected source on this host: {}", detect_source().name())), "{s}");
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
    let exit_loop = exit_loop();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", KVMPROF, "record", "-o", path_str(&out), "--", &exit_loop])
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
        "mount -t tmpfs none /sys/kernel/tracing && exec setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin {KVMPROF} record -o {} -- {}",
        path_str(&out),
        exit_loop()
    );
    let o = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    assert_one_line_error(&o, "run: mount -t tracefs nodev /sys/kernel/tracing");
}
