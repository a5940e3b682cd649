//! Benchmark (ignored by default; numbers, not a timed test):
//! `cargo test --release -p profiler-daemon --test serve_bench -- --ignored --nocapture`.
//! The size of `/metrics` and the time to gather and encode it with 10 VMs × 4 vCPUs × top 50
//! functions (synthetic series, as the collector publishes them), and a real daemon's CPU,
//! RSS and scrape latency while a tinyvmm guest writes its disk.
mod common;
#[path = "serve_support.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use profiler_daemon::model::Direction;
use profiler_daemon::serve::metrics::{encode, registry, Exposition, Hist, Published, SymbolState, VmSeries, LE_NS};
use support::*;

fn synthetic(vms: usize, vcpus: usize, functions: usize) -> Exposition {
    let reasons = ["IO", "HLT", "MMIO", "IRQ_WINDOW_OPEN"];
    let vms = (0..vms)
        .map(|v| {
            let mut exits = BTreeMap::new();
            let mut durations = BTreeMap::new();
            for r in reasons {
                for c in 0..vcpus {
                    exits.insert((c.to_string(), r.to_string()), 1_000_000 + c as u64);
                }
                let mut h = Hist { count: 4_000_000, sum_ns: 40_000_000_000, ..Hist::default() };
                for (i, b) in h.buckets.iter_mut().enumerate().take(LE_NS.len()) {
                    *b = 1000 * i as u64;
                }
                durations.insert(r.to_string(), h);
            }
            let pio = (0..24u16).flat_map(|p| [((0x1f0 + p, Direction::In), 5000), ((0x1f0 + p, Direction::Out), 7000)]).collect();
            let mut fns: Vec<(String, u64, u64)> = (0..functions).map(|f| (format!("guest_kernel_function_number_{f}"), 10_000 + f as u64, 90_000_000)).collect();
            fns.push(("[other]".into(), 123, 456));
            VmSeries { label: format!("vm-{v:02}"), pid: 1000 + v as u32, symbols: SymbolState::Ok, exits, durations, pio, mmio: [10, 20], functions: fns }
        })
        .collect();
    Exposition { vms, programs_attached: 4, live_vms: 10, ..Exposition::default() }
}

#[test]
#[ignore]
fn bench_metrics_size_and_encode_time_10_vms_4_vcpus_top_50() {
    let published = Published::default();
    published.set(synthetic(10, 4, 50));
    let reg = registry(published);
    let body = encode(&reg);
    let series = String::from_utf8_lossy(&body).lines().filter(|l| !l.starts_with('#')).count();
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let b = encode(&reg);
        times.push(t.elapsed());
        assert_eq!(b.len(), body.len());
    }
    times.sort();
    eprintln!(
        "/metrics, 10 VMs x 4 vCPUs x top 50: {} bytes, {series} series; gather+encode p50 {:.2} ms, p99 {:.2} ms",
        body.len(),
        times[100].as_secs_f64() * 1e3,
        times[198].as_secs_f64() * 1e3
    );
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap()
}

#[test]
#[ignore]
fn bench_daemon_cpu_rss_and_scrape_latency_on_a_busy_guest() {
    require_live();
    let dir = tmpdir();
    let tinyvmm = target_bin("tinyvmm");
    let elf = dir.path().join("guest.elf");
    assert!(run(path_str(&tinyvmm), &["guest-elf", "-o", path_str(&elf)]).status.success());
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, format!("[[vm]]\nname = \"bench-*\"\nvmlinux = \"{}\"\n", elf.display())).unwrap();
    let serve = Serve::start(&["--config", path_str(&cfg)]);
    std::thread::sleep(Duration::from_secs(2));
    let idle0 = cpu_ticks(serve.pid());
    std::thread::sleep(Duration::from_secs(10));
    let idle = cpu_ticks(serve.pid()) - idle0;
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(4 << 20).unwrap();
    let t0 = cpu_ticks(serve.pid());
    let start = Instant::now();
    let mut vm = ChildGuard(start_tinyvmm(&tinyvmm, "bench-1", &["--workload", "disk-write", "--count", "3000", "--disk", path_str(&disk)]));
    let (mut lat, mut rss, mut anon, mut size, mut exits) = (Vec::new(), 0, 0, 0, 0.0f64);
    while vm.0.try_wait().unwrap().is_none() {
        let t = Instant::now();
        let body = get_text(serve.addr, "/metrics");
        lat.push(t.elapsed());
        size = size.max(body.len());
        exits = exits.max(sum(&select(&parse_metrics(&body), "kvmprof_exits_total", &[("vm", "bench-1")])));
        rss = rss.max(status_kib(serve.pid(), "VmRSS:"));
        anon = anon.max(status_kib(serve.pid(), "RssAnon:"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let busy = cpu_ticks(serve.pid()) - t0;
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    eprintln!(
        "idle: {:.2}% of a CPU; busy guest (at least {exits} exits in {secs:.1} s, {:.0}/s): daemon {:.2}% of a CPU, max RSS {rss} KiB (anon {anon} KiB); \
         /metrics {size} bytes, latency p50 {:.2} ms, max {:.2} ms over {} scrapes",
        100.0 * idle as f64 / hz / 10.0,
        exits / secs,
        100.0 * busy as f64 / hz / secs,
        lat[lat.len() / 2].as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3,
        lat.len()
    );
}
