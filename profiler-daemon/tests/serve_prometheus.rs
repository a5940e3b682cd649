//! `kvmprof serve` scraped by a real Prometheus (Debian's `prometheus`, started here on
//! loopback, scrape interval 1 s) while a tinyvmm guest writes its disk: the scraped per-port
//! exit counts equal tinyvmm's own `--stats-json` counts exactly, the exit rate is non-zero
//! while it runs, and every expression of the Grafana dashboard returns data.
mod common;
#[path = "serve_support.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use support::*;
use tinyvmm_abi::stats::RunStats;

/// Sectors the guest writes: about 7 s of exits under the profiler here, so that at least two
/// 2 s polls with different values fall in one rate() window while it runs.
const SECTORS: &str = "1600";

#[test]
fn prometheus_scrapes_exact_per_port_counts_and_every_dashboard_expression_has_data() {
    require_live();
    let dir = tmpdir();
    let tinyvmm = target_bin("tinyvmm");
    let elf = dir.path().join("guest.elf");
    let o = run(path_str(&tinyvmm), &["guest-elf", "-o", path_str(&elf)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let name = format!("serve-prom-{}", std::process::id());
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, format!("top_functions = 10\n[[vm]]\nname = \"serve-prom-*\"\nvmlinux = \"{}\"\n", elf.display())).unwrap();
    // Polls every 2 s: a VM's last values stay up for one poll, so a 1 s scrape sees them.
    let serve = Serve::start(&["--config", path_str(&cfg), "--interval", "2"]);
    let prom = Prometheus::start(&[serve.addr]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while prom.query("up{job=\"kvmprof\"} == 1").is_empty() {
        assert!(Instant::now() < deadline, "prometheus never scraped kvmprof serve");
        std::thread::sleep(Duration::from_millis(200));
    }

    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let stats_path = dir.path().join("stats.json");
    let t_start = unix_now();
    let mut vm = ChildGuard(start_tinyvmm(
        &tinyvmm,
        &name,
        &["--workload", "disk-write", "--count", SECTORS, "--disk", path_str(&disk), "--stats-json", path_str(&stats_path)],
    ));
    let rate_q = format!("sum(rate(kvmprof_exits_total{{vm=\"{name}\"}}[8s]))");
    let mut max_rate: f64 = 0.0;
    let status = loop {
        if let Some(s) = vm.0.try_wait().unwrap() {
            break s;
        }
        if let Some(r) = prom.query(&rate_q).first() {
            max_rate = max_rate.max(value(r));
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let t_end = unix_now();
    assert!(status.success(), "tinyvmm failed: {status}");
    // The polls above can fall between scrapes on a busy machine: also ask Prometheus for the
    // highest 8 s rate it saw over the last minute, which covers the whole run.
    std::thread::sleep(Duration::from_millis(2500));
    if let Some(r) = prom.query(&format!("max_over_time({rate_q}[1m:1s])")).first() {
        max_rate = max_rate.max(value(r));
    }
    assert!(max_rate > 1000.0, "rate(kvmprof_exits_total) while the VM ran: max {max_rate}/s");
    let stats: RunStats = serde_json::from_slice(&std::fs::read(&stats_path).unwrap()).expect("tinyvmm stats");

    // Its series go one poll after its last values: then Prometheus holds what it scraped.
    serve.wait_for(Duration::from_secs(15), "the VM's series to be removed", |m| select(m, "kvmprof_vm_info", &[("vm", &name)]).is_empty());
    std::thread::sleep(Duration::from_millis(1500));
    let per_port = prom.query(&format!("sum by (port) (last_over_time(kvmprof_pio_exits_total{{vm=\"{name}\"}}[5m]))"));
    let scraped: BTreeMap<String, u64> = per_port.iter().map(|s| (s["metric"]["port"].as_str().unwrap().to_string(), value(s) as u64)).collect();
    let expected: BTreeMap<String, u64> = stats.by_port.iter().map(|(p, n)| (format!("{p:#x}"), *n)).collect();
    assert_eq!(scraped, expected, "per-port exits scraped by Prometheus vs tinyvmm --stats-json");
    let total = |q: &str| prom.query(&format!("sum(last_over_time({q}{{vm=\"{name}\"}}[5m]))")).first().map(value).unwrap_or(f64::NAN) as u64;
    assert_eq!(total("kvmprof_exits_total"), stats.exits_total, "all exits");
    assert_eq!(total("kvmprof_exit_duration_seconds_count"), stats.exits_total, "histogram count");
    // Function series (top 10 and [other]) add up to every exit; the IDE data port's outs are
    // all in ide_output_data.
    assert_eq!(total("kvmprof_function_exits_total"), stats.exits_total, "function series sum");
    let ide_out = prom.query(&format!(
        "last_over_time(kvmprof_function_exits_total{{vm=\"{name}\",function=\"tinyvmm_guest::ide::ide_output_data\"}}[5m])"
    ));
    let pio_1f0_out =
        prom.query(&format!("last_over_time(kvmprof_pio_exits_total{{vm=\"{name}\",port=\"0x1f0\",direction=\"out\"}}[5m])"));
    assert_eq!(ide_out.first().map(value), pio_1f0_out.first().map(value), "ide_output_data exits = out 0x1f0 exits");
    assert_eq!(pio_1f0_out.first().map(value), Some(256.0 * SECTORS.parse::<f64>().unwrap()));

    check_dashboard(&prom, &name, t_start - 2.0, t_end + 4.0);
}

/// Every expression of the Grafana dashboard, with its template variables set to this VM,
/// returns data over the run (as Grafana asks: a range query).
fn check_dashboard(prom: &Prometheus, vm: &str, start: f64, end: f64) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/kvmprof-grafana.json");
    let dash: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("dashboard JSON");
    let subst = |e: &str| e.replace("$__rate_interval", "4s").replace("$__interval", "1s").replace("$vm", vm).replace("$vcpu", "0");
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push((p["title"].as_str().unwrap().to_string(), t["expr"].as_str().expect("expr").to_string()));
        }
    }
    // Template variables: Grafana's label_values(SELECTOR, LABEL) is `count by (LABEL) (SELECTOR)`.
    for v in dash["templating"]["list"].as_array().expect("templating") {
        let q = v["query"].as_str().expect("query");
        let inner = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).expect("label_values(...)");
        let (sel, label) = inner.rsplit_once(',').unwrap();
        exprs.push((format!("variable {}", v["name"]), format!("count by ({}) ({})", label.trim(), sel.trim())));
    }
    assert!(exprs.len() >= 12, "{exprs:?}");
    for (title, e) in exprs {
        let q = subst(&e);
        assert!(!q.contains('$'), "unsubstituted variable in {q}");
        let series = prom.query_range(&q, start, end, 1.0);
        let points: usize = series.iter().map(|s| s["values"].as_array().map_or(0, |v| v.len())).sum();
        assert!(points > 0, "dashboard panel {title:?}: {q} returned no data");
    }
}

/// The other files of dashboards/: the alert rules and the scrape config pass `promtool`
/// (Debian's prometheus package), the example config parses as `serve --config` reads it,
/// and the systemd unit passes `systemd-analyze verify`.
#[test]
fn the_dashboards_examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let tmp = tmpdir();
    for f in ["prometheus-scrape.yml", "kvmprof-alerts.yml"] {
        std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
    }
    let promtool = which("promtool").expect("promtool (Debian package prometheus) is required");
    let rules = run(path_str(&promtool), &["check", "rules", path_str(&tmp.path().join("kvmprof-alerts.yml"))]);
    assert!(rules.status.success(), "{}{}", stdout(&rules), stderr(&rules));
    let cfg = run(path_str(&promtool), &["check", "config", path_str(&tmp.path().join("prometheus-scrape.yml"))]);
    assert!(cfg.status.success(), "{}{}", stdout(&cfg), stderr(&cfg));

    let serve_cfg = profiler_daemon::serve::config::Config::load(&dir.join("kvmprof-serve.toml")).expect("the example config");
    assert_eq!(serve_cfg.vms.len(), 2);
    assert!(serve_cfg.symbols_for("web-3").and_then(|s| s.vmlinux.as_ref()).is_some());

    // Verified with the binary under test in ExecStart (the unit names /usr/local/bin).
    let unit = std::fs::read_to_string(dir.join("kvmprof.service")).unwrap();
    assert!(unit.contains("NoNewPrivileges=yes") && unit.contains("CapabilityBoundingSet="), "hardening lost");
    let local = tmp.path().join("kvmprof.service");
    std::fs::write(&local, unit.replace("/usr/local/bin/kvmprof", KVMPROF)).unwrap();
    let sa = which("systemd-analyze").expect("systemd-analyze (package systemd)");
    let v = run(path_str(&sa), &["verify", path_str(&local)]);
    assert!(v.status.success() && stderr(&v).trim().is_empty(), "{}", stderr(&v));
}
