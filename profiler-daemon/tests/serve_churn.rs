//! VM churn under `kvmprof serve`: 50 short-lived tinyvmm VMs (after 20 to warm up) started
//! and stopped. After
//! they end no series of theirs is left, the in-kernel map holds no key of theirs, and the
//! daemon's RSS and open file descriptors do not grow (measured after a warm-up and at the end).
mod common;
#[path = "serve_support.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use support::*;

/// VMs before the first measurement (allocator and caches warm up), then after it.
const WARMUP: usize = 20;
const MEASURED: usize = 50;

/// Anonymous resident memory (heap, stacks): what a leak grows. The file-backed part (the
/// binary's pages) comes and goes with the page cache.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix("RssAnon:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("RssAnon")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// What each fd is, for the failure message.
fn fd_targets(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| format!("{}->{}", e.file_name().to_string_lossy(), std::fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default()))
        .collect();
    v.sort();
    v
}

/// (anonymous RSS KiB, open fds) of the daemon while the host is quiet (no VM, no exit key:
/// other VMs on the host make the daemon read and hold more), each the minimum of 10 samples
/// taken between two quiet scrapes (a poll's buffers and a scrape's socket are transient).
fn measure(serve: &Serve) -> (u64, usize) {
    let quiet = |m: &[Sample]| sum(&select(m, "kvmprof_vms", &[])) == 0.0 && sum(&select(m, "kvmprof_map_entries", &[])) == 0.0;
    let (mut rss, mut fds, mut n) = (u64::MAX, usize::MAX, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while n < 10 {
        assert!(std::time::Instant::now() < deadline, "the host was not quiet (no VM, no exit key) for 10 samples in 60 s");
        std::thread::sleep(Duration::from_millis(100));
        if !quiet(&serve.metrics()) {
            continue;
        }
        // Let the server close the socket of the scrape just answered.
        std::thread::sleep(Duration::from_millis(50));
        let (r, f) = (rss_kib(serve.pid()), open_fds(serve.pid()));
        if quiet(&serve.metrics()) {
            (rss, fds, n) = (rss.min(r), fds.min(f), n + 1);
        }
    }
    (rss, fds)
}

/// Runs `n` boot-only VMs, two at a time; their (name, PID).
fn churn(tinyvmm: &std::path::Path, prefix: &str, from: usize, n: usize) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for pair in (from..from + n).collect::<Vec<_>>().chunks(2) {
        let mut running: Vec<(String, ChildGuard)> = pair
            .iter()
            .map(|i| {
                let name = format!("{prefix}-{i}");
                let c = start_tinyvmm(tinyvmm, &name, &["--workload", "timer", "--seconds", "0", "--skip-pmtmr-calibration"]);
                (name, ChildGuard(c))
            })
            .collect();
        for (name, c) in running.iter_mut() {
            let status = c.0.wait().unwrap();
            assert!(status.success(), "{name}: {status}");
            out.push((name.clone(), c.0.id()));
        }
    }
    out
}

/// Waits until every one of `vms` has had series (its PID in `kvmprof_vm_info`) in a scrape.
fn wait_seen(seen: &std::sync::Mutex<BTreeSet<String>>, vms: &[(String, u32)]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let missed: Vec<&(String, u32)> = {
            let seen = seen.lock().unwrap();
            vms.iter().filter(|(_, pid)| !seen.contains(&pid.to_string())).collect()
        };
        if missed.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "VMs that never had series: {missed:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until no series names one of `vms` (by label, or by PID for VMs that ended before
/// their name was read); the samples then.
fn wait_gone(serve: &Serve, vms: &[(String, u32)]) {
    let names: BTreeSet<String> = vms.iter().flat_map(|(n, pid)| [n.clone(), format!("vm-{pid}"), format!("tinyvmm-{pid}")]).collect();
    let pids: BTreeSet<String> = vms.iter().map(|(_, p)| p.to_string()).collect();
    serve.wait_for(Duration::from_secs(20), "no series of the ended VMs", |m| {
        !m.iter().any(|s| s.labels.get("vm").is_some_and(|v| names.contains(v)) || s.labels.get("pid").is_some_and(|p| pids.contains(p)))
    });
}

#[test]
fn fifty_short_vms_leave_no_series_keys_memory_or_fds_behind() {
    require_live();
    let tinyvmm = target_bin("tinyvmm");
    let serve = Serve::start(&["--interval", "0.5"]);
    let prefix = format!("churn-{}", std::process::id());

    // Every VM gets its series for at least one poll: record the PIDs /metrics shows.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::<String>::new()));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (seen, done, addr) = (seen.clone(), done.clone(), serve.addr);
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((200, body)) = http_get(addr, "/metrics") {
                    let m = parse_metrics(&String::from_utf8_lossy(&body));
                    seen.lock().unwrap().extend(select(&m, "kvmprof_vm_info", &[]).iter().map(|s| s.labels["pid"].clone()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let first = churn(&tinyvmm, &prefix, 0, WARMUP);
    wait_seen(&seen, &first);
    wait_gone(&serve, &first);
    let (rss0, fds0) = measure(&serve);

    let rest = churn(&tinyvmm, &prefix, WARMUP, MEASURED);
    wait_seen(&seen, &rest);
    wait_gone(&serve, &rest);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    // Quiet means no exit key is left either: the ended VMs' keys were deleted.
    let (rss1, fds1) = measure(&serve);
    eprintln!("after {WARMUP} VMs: RSS {rss0} KiB, {fds0} fds; after {MEASURED} more: RSS {rss1} KiB, {fds1} fds");
    assert!(fds1 <= fds0, "open fds grew from {fds0} to {fds1}: {:?}", fd_targets(serve.pid()));
    // A slack of 1 MiB for allocator noise; a leak of the VMs' state would be far more.
    assert!(rss1 <= rss0 + 1024, "RSS grew from {rss0} KiB to {rss1} KiB over {MEASURED} VMs");
    // The daemon counted them all: its polls went on and it never logged an error.
    let log = serve.log_text();
    assert!(!log.contains("cannot"), "{log}");
}
