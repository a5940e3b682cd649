//! pprof: `GET /debug/pprof/exits?seconds=N` and `kvmprof report --format pprof -o FILE`.
//! The profiles are decoded here with a protobuf reader of the tests' own, and their
//! per-function totals compared with `/metrics` (same window) and with `report --by function`.
mod common;
#[path = "serve_support.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use support::*;

/// Per function (the frame under the reason leaf): (exits, ns).
fn by_function(samples: &[PprofSample], vm: Option<&str>) -> BTreeMap<String, (u64, u64)> {
    let mut m: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for s in samples {
        if vm.is_some_and(|vm| !s.labels.iter().any(|(k, v)| k == "vm" && v == vm)) {
            continue;
        }
        assert_eq!(s.stack.len(), 3, "stack reason <- function <- caller: {s:?}");
        let e = m.entry(s.stack[1].clone()).or_default();
        e.0 += s.values[0] as u64;
        e.1 += s.values[1] as u64;
    }
    m
}

fn guest_elf(dir: &std::path::Path) -> std::path::PathBuf {
    let elf = dir.join("guest.elf");
    let o = run(path_str(&target_bin("tinyvmm")), &["guest-elf", "-o", path_str(&elf)]);
    assert!(o.status.success(), "{}", stderr(&o));
    elf
}

#[test]
fn the_endpoint_profile_has_the_window_counts_of_metrics() {
    require_live();
    let dir = tmpdir();
    let elf = guest_elf(dir.path());
    let prefix = format!("pprof-{}", std::process::id());
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, format!("top_functions = 50\n[[vm]]\nname = \"{prefix}-*\"\nvmlinux = \"{}\"\n", elf.display())).unwrap();
    let serve = Serve::start(&["--config", path_str(&cfg), "--interval", "0.5"]);
    let (status, body) = http_get(serve.addr, "/debug/pprof/exits?seconds=abc").unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    // The window opens before the VM starts and closes after it ended: all its exits are in it.
    let addr = serve.addr;
    let window = std::thread::spawn(move || http_get(addr, "/debug/pprof/exits?seconds=8"));
    std::thread::sleep(Duration::from_millis(500));
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let vm = format!("{prefix}-1");
    let started = Instant::now();
    let mut child = ChildGuard(start_tinyvmm(&target_bin("tinyvmm"), &vm, &["--workload", "disk-write", "--count", "30", "--disk", path_str(&disk)]));
    // The VM's function counters only grow: their last values are the maxima seen, until
    // its series are removed (one poll after it ended).
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    let (mut ended, mut seen) = (None, false);
    loop {
        let m = serve.metrics();
        let series = select(&m, "kvmprof_function_exits_total", &[("vm", &vm)]);
        seen |= !series.is_empty();
        for s in &series {
            let v = last.entry(s.labels["function"].clone()).or_default();
            *v = v.max(s.value);
        }
        if ended.is_none() {
            ended = child.0.try_wait().unwrap();
        } else if seen && series.is_empty() && select(&m, "kvmprof_vm_info", &[("vm", &vm)]).is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(7), "the VM and its series outlived the window");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ended.unwrap().success());
    let (status, gz) = window.join().unwrap().expect("pprof request");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&gz));
    let (types, samples) = decode_pprof(&gz);
    assert_eq!(types, ["exits/count", "exit_time/nanoseconds"]);
    let prof = by_function(&samples, Some(&vm));
    assert_eq!(last.get("[other]").copied(), Some(0.0), "all functions fit in the top 50: {last:?}");
    last.remove("[other]");
    let metrics: BTreeMap<String, u64> = last.into_iter().filter(|(_, v)| *v > 0.0).map(|(f, v)| (f, v as u64)).collect();
    let pprof: BTreeMap<String, u64> = prof.iter().map(|(f, (n, _))| (f.clone(), *n)).collect();
    assert_eq!(pprof, metrics, "per-function exits: pprof window vs /metrics");
    assert!(pprof["tinyvmm_guest::ide::ide_output_data"] == 30 * 256, "{pprof:?}");
}

#[test]
fn report_format_pprof_has_the_counts_of_report_by_function() {
    require_live();
    let dir = tmpdir();
    let elf = guest_elf(dir.path());
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let rec = dir.path().join("run.kvmprof");
    let tinyvmm = target_bin("tinyvmm");
    let o = run(
        KVMPROF,
        &["record", "-o", path_str(&rec), "--", path_str(&tinyvmm), "run", "--workload", "disk-write", "--count", "20", "--disk", path_str(&disk), "--quiet"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = dir.path().join("run.pb.gz");
    let o = run(KVMPROF, &["report", path_str(&rec), "--vmlinux", path_str(&elf), "--format", "pprof", "-o", path_str(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (types, samples) = decode_pprof(&std::fs::read(&out).unwrap());
    assert_eq!(types, ["exits/count", "exit_time/nanoseconds"]);
    let prof = by_function(&samples, None);
    let rep = report_json(&rec, &["--vmlinux", path_str(&elf), "--by", "function"]);
    let want: BTreeMap<String, (u64, u64)> = rows(&rep)
        .iter()
        .map(|r| (r["function"].as_str().map_or_else(|| r["rip"].as_str().unwrap().to_string(), str::to_string), (r["count"].as_u64().unwrap(), r["time_ns"].as_u64().unwrap())))
        .collect();
    assert_eq!(prof, want, "pprof vs report --by function (count, time_ns)");
}
