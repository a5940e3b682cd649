//! The hw source (`kvm_exit`/`kvm_entry`) cannot fire on this PVM host, so real-format text of
//! those tracepoints, as ftrace and `perf script` print them on VMX and SVM hosts, is replayed
//! through `kvmprof import`: the same `ThreadState` state machine the eBPF programs run.
mod common;

use std::fmt::Write;

use common::*;
use profiler_common::{hist_bucket, hist_bucket_value};

/// What a report row says when its `n` exits each took exactly `ns`: time, mean, and p50/p99
/// (the value of the log-linear bucket holding `ns`, within 6.25% of it), and its share of
/// all exit time.
fn assert_exact_times(r: &serde_json::Value, n: u64, ns: u64, total_time_ns: u64) {
    let q = hist_bucket_value(hist_bucket(ns));
    assert!(q.abs_diff(ns) * 16 <= ns, "{q} is within 6.25% of {ns}");
    assert_eq!(
        (r["count"].as_u64(), r["time_ns"].as_u64(), r["mean_ns"].as_u64(), r["p50_ns"].as_u64(), r["p99_ns"].as_u64()),
        (Some(n), Some(n * ns), Some(ns), Some(q), Some(q)),
        "{r:#}"
    );
    let want = 100.0 * (n * ns) as f64 / total_time_ns as f64;
    assert!((r["percent"].as_f64().unwrap() - want).abs() <= 1e-9, "percent is not {want}: {r:#}");
}

/// ftrace text from a VMX host (with `options/record-tgid`), two vCPU threads.
fn vmx_ftrace() -> String {
    let mut t = String::from("# tracer: nop\n#\n");
    let line = |t: &mut String, tid: u32, ts: &str, ev: &str| {
        let comm = if tid == 4242 { "CPU 0/KVM" } else { "CPU 1/KVM" };
        writeln!(t, "       {comm}-{tid}    (4240) [002] d..2.  {ts}: {ev}").unwrap();
    };
    for i in 0..3 {
        let base = format!("100.00{i}");
        line(&mut t, 4242, &format!("{base}000"), "kvm_exit: vcpu 0 reason IO_INSTRUCTION rip 0xffffffff81001000 info1 0x0000000001f70000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000");
        line(&mut t, 4242, &format!("{base}001"), "kvm_pio: pio_write at 0x1f7 size 1 count 1 val 0x30");
        // On hw these fire too, but do not delimit exits.
        line(&mut t, 4242, &format!("{base}002"), "kvm_userspace_exit: reason KVM_EXIT_IO (2)");
        line(&mut t, 4242, &format!("{base}009"), "kvm_fpu: load");
        line(&mut t, 4242, &format!("{base}010"), "kvm_entry: vcpu 0, rip 0xffffffff81001002 intr_info 0x00000000 error_code 0x00000000");
    }
    line(&mut t, 4242, "100.003000", "kvm_exit: vcpu 0 reason EPT_VIOLATION rip 0xffffffff81002000 info1 0x0000000000000182 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000");
    line(&mut t, 4242, "100.003001", "kvm_emulate_insn: 0:ffffffff81002000:89 01 (prot64)");
    line(&mut t, 4242, "100.003002", "kvm_mmio: mmio write len 4 gpa 0xfebf0000 val 0x1");
    line(&mut t, 4242, "100.003004", "kvm_entry: vcpu 0, rip 0xffffffff81002002");
    for start in ["100.000500", "100.002500"] {
        line(&mut t, 4243, start, "kvm_exit: vcpu 1 reason HLT rip 0xffffffff81003000 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000");
    }
    // Entries 1 ms after each HLT (interleaved with vCPU 0 in a real trace; order per thread is what counts).
    let mut lines: Vec<String> = t.lines().map(String::from).collect();
    lines.push("       CPU 1/KVM-4243    (4240) [003] d..2.  100.001500: kvm_entry: vcpu 1, rip 0xffffffff81003001".into());
    lines.push("       CPU 1/KVM-4243    (4240) [003] d..2.  100.003500: kvm_entry: vcpu 1, rip 0xffffffff81003001".into());
    // Sort by timestamp as ftrace would print them.
    let ts = |l: &String| l.split("]").nth(1).and_then(|r| r.split_whitespace().nth(1)).map(String::from).unwrap_or_default();
    let (head, mut body): (Vec<String>, Vec<String>) = lines.into_iter().partition(|l| l.starts_with('#'));
    body.sort_by_key(ts);
    head.into_iter().chain(body).collect::<Vec<_>>().join("\n") + "\n"
}

/// `perf script` text from an SVM host.
fn svm_perf_script() -> String {
    let mut t = String::new();
    let mut ts = 2000.0f64;
    let mut ev = |t: &mut String, dt_us: f64, e: &str| {
        ts += dt_us / 1e6;
        writeln!(t, " qemu-system-x86  5001 [003] {ts:.6}: kvm:{e}").unwrap();
    };
    for _ in 0..2 {
        ev(&mut t, 100.0, "kvm_exit: vcpu 0 reason io rip 0xffffffff81001000 info1 0x0000000001f70010 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000");
        ev(&mut t, 1.0, "kvm_pio: pio_read at 0x1f7 size 1 count 1 val 0x50");
        ev(&mut t, 2.0, "kvm_entry: vcpu 0, rip 0xffffffff81001002");
    }
    ev(&mut t, 100.0, "kvm_exit: vcpu 0 reason npf rip 0xffffffff81002000 info1 0x0000000000000006 info2 0x00000000febf0000 intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000");
    ev(&mut t, 7.0, "kvm_entry: vcpu 0, rip 0xffffffff81002000");
    ev(&mut t, 100.0, "kvm_exit: vcpu 0 reason DE excp rip 0xffffffff81004000 info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000");
    ev(&mut t, 5.0, "kvm_entry: vcpu 0, rip 0xffffffff81004000");
    t
}

fn import(format: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tmpdir();
    let txt = dir.path().join("trace.txt");
    std::fs::write(&txt, text).unwrap();
    let rec = dir.path().join("rec.kvmprof");
    let o = run(KVMPROF, &["import", format, path_str(&txt), "-o", path_str(&rec)]);
    assert!(o.status.success(), "import failed: {}", stderr(&o));
    (dir, rec)
}

#[test]
fn vmx_ftrace_counts_times_and_names() {
    let (_d, rec) = import("ftrace", &vmx_ftrace());
    let v = report_json(&rec, &["--by", "rip"]);
    assert_eq!(v["source"], "hw");
    let io = row_at(&v, "rip", "0xffffffff81001000");
    assert_eq!(io["count"], 3);
    assert_eq!(io["time_ns"], 30_000, "exit -> entry is 10 us, three times");
    assert_eq!(io["reason"], "IO_INSTRUCTION");
    assert_eq!(io["port"], "0x1f7");
    assert_eq!(io["direction"], "out");
    let ept = row_at(&v, "rip", "0xffffffff81002000");
    assert_eq!((ept["count"].as_u64(), ept["time_ns"].as_u64()), (Some(1), Some(4_000)));
    assert_eq!(ept["reason"], "EPT_VIOLATION");
    assert!(ept["port"].is_null(), "an MMIO exit has no port");
    let hlt = row_at(&v, "rip", "0xffffffff81003000");
    assert_eq!((hlt["count"].as_u64(), hlt["time_ns"].as_u64()), (Some(2), Some(2_000_000)));
    assert_eq!(hlt["reason"], "HLT");
    assert_eq!(rows(&v).len(), 3);
    assert_eq!(v["total_time_ns"], 30_000 + 4_000 + 2_000_000);
    assert_eq!(v["total_exits"], 6);
    let total = 30_000 + 4_000 + 2_000_000;
    assert_exact_times(io, 3, 10_000, total);
    assert_exact_times(ept, 1, 4_000, total);
    assert_exact_times(hlt, 2, 1_000_000, total);
    // The tracepoint names the vCPU (kvm_exit's vcpu_id) on hw, for each exit.
    let rec_profile = profiler_daemon::model::recording::load(&rec).unwrap();
    for e in &rec_profile.exits {
        let want = if e.tid == 4242 { 0 } else { 1 };
        assert_eq!(e.vcpu, Some(want), "{e:?}");
    }

    let by_vcpu = report_json(&rec, &["--by", "vcpu"]);
    let vcpu = |n: u64| rows(&by_vcpu).iter().find(|r| r["vcpu"] == n).unwrap_or_else(|| panic!("no vCPU {n}: {by_vcpu:#}")).clone();
    assert_eq!((vcpu(0)["count"].as_u64(), vcpu(0)["tid"].as_u64()), (Some(4), Some(4242)));
    assert_eq!((vcpu(1)["count"].as_u64(), vcpu(1)["tid"].as_u64()), (Some(2), Some(4243)));
    assert_eq!(rows(&by_vcpu).len(), 2);
    assert_eq!(vcpu(0)["time_ns"], 34_000);
    assert_eq!(vcpu(1)["time_ns"], 2_000_000);
    let pct_sum: f64 = rows(&by_vcpu).iter().map(|r| r["percent"].as_f64().unwrap()).sum();
    assert!((pct_sum - 100.0).abs() <= 1e-9, "{pct_sum}");

    let by_reason = report_json(&rec, &["--by", "reason"]);
    assert_exact_times(row_at(&by_reason, "reason", "IO_INSTRUCTION"), 3, 10_000, total);
    assert_exact_times(row_at(&by_reason, "reason", "HLT"), 2, 1_000_000, total);
    assert_exact_times(row_at(&by_reason, "reason", "EPT_VIOLATION"), 1, 4_000, total);
}

#[test]
fn svm_perf_script_counts_times_and_names() {
    let (_d, rec) = import("perf-script", &svm_perf_script());
    let v = report_json(&rec, &["--by", "rip"]);
    assert_eq!(v["source"], "hw");
    let io = row_at(&v, "rip", "0xffffffff81001000");
    assert_eq!((io["count"].as_u64(), io["time_ns"].as_u64()), (Some(2), Some(6_000)));
    assert_eq!(io["reason"], "io");
    assert_eq!((io["port"].as_str(), io["direction"].as_str()), (Some("0x1f7"), Some("in")));
    let npf = row_at(&v, "rip", "0xffffffff81002000");
    assert_eq!((npf["count"].as_u64(), npf["time_ns"].as_u64(), npf["reason"].as_str()), (Some(1), Some(7_000), Some("npf")));
    let de = row_at(&v, "rip", "0xffffffff81004000");
    assert_eq!((de["count"].as_u64(), de["time_ns"].as_u64(), de["reason"].as_str()), (Some(1), Some(5_000), Some("DE excp")));
    assert_eq!(v["total_exits"], 4);
    let total = 6_000 + 7_000 + 5_000;
    assert_eq!(v["total_time_ns"], total);
    assert_exact_times(io, 2, 3_000, total);
    assert_exact_times(npf, 1, 7_000, total);
    assert_exact_times(de, 1, 5_000, total);
    // perf script names no thread: kvm_exit's vcpu field is the only vCPU index.
    let by_vcpu = report_json(&rec, &["--by", "vcpu"]);
    assert_eq!(rows(&by_vcpu).len(), 1, "{by_vcpu:#}");
    assert_eq!((rows(&by_vcpu)[0]["vcpu"].as_u64(), rows(&by_vcpu)[0]["tid"].as_u64()), (Some(0), Some(5001)));
    assert_eq!(rows(&by_vcpu)[0]["percent"].as_f64(), Some(100.0));
}

#[test]
fn text_without_kvm_events_is_refused() {
    let dir = tmpdir();
    let txt = dir.path().join("junk.txt");
    std::fs::write(&txt, "hello\nworld\n").unwrap();
    let o = run(KVMPROF, &["import", "ftrace", path_str(&txt), "-o", path_str(&dir.path().join("r"))]);
    assert_one_line_error(&o, "no KVM tracepoint events");
    let o = run(KVMPROF, &["import", "ftrace", "/no/such/file", "-o", path_str(&dir.path().join("r"))]);
    assert_one_line_error(&o, "cannot read /no/such/file");
}

/// Lines that are not understood are counted and named by line number (the first 10), the
/// rest is imported; every exit also goes to the record stream, in trace order.
#[test]
fn malformed_lines_are_named_by_number_and_records_stream() {
    let mut text = vmx_ftrace();
    let good_lines = text.lines().count();
    text.push_str("this is not a trace line\n");
    text.push_str("       CPU 0/KVM-4242    (4240) [002] d..2.  100.009000: kvm_pio: pio_write size 1\n");
    text.push_str("\n# a comment is not malformed\n");
    let (_d, rec) = import("ftrace", &text);
    let dir = rec.parent().unwrap();
    let o = run(KVMPROF, &["import", "ftrace", path_str(&dir.join("trace.txt")), "-o", path_str(&dir.join("again.kvmprof"))]);
    let err = stderr(&o);
    assert!(err.contains("(2 lines not understood)"), "{err}");
    assert!(err.contains(&format!("lines not understood: {}, {}", good_lines + 1, good_lines + 2)), "{err}");
    let p = profiler_daemon::model::recording::load(&rec).unwrap();
    assert_eq!(p.total_exits(), 6);
    let records = profiler_daemon::model::recording::records(&p).unwrap();
    assert_eq!(records.len(), 6);
    assert_eq!(records.iter().map(|r| r.duration_ns).sum::<u64>(), p.total_time_ns());
    // In trace order: the order the exits ended in (two vCPUs' exits overlap).
    assert!(records.windows(2).all(|w| w[0].start_ns + w[0].duration_ns <= w[1].start_ns + w[1].duration_ns), "in trace order");
}

/// Standard input is read in one pass too (the source is chosen from a lookahead).
#[test]
fn standard_input_imports_the_same() {
    let (_d, from_file) = import("perf-script", &svm_perf_script());
    let dir = tmpdir();
    let out = dir.path().join("stdin.kvmprof");
    let mut child = std::process::Command::new(KVMPROF)
        .args(["import", "perf-script", "-", "-o", path_str(&out)])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(svm_perf_script().as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(report_json(&out, &["--by", "rip"])["rows"], report_json(&from_file, &["--by", "rip"])["rows"]);
}
