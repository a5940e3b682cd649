//! `kvmprof demo --json`: the acceptance points, asserted from the JSON of one real
//! run (eBPF recording of tinyvmm on KVM). Needs root, /dev/kvm and BPF: without them this
//! test FAILS (it does not skip), with the demo's own one-line error.
mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// The `data-value` of every `<rect class="bar">` of an SVG chart, in document order
/// (category by category, series within).
fn svg_bar_values(path: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{} is not valid XML: {e}", path.display()));
    doc.descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("class") == Some("bar"))
        .map(|n| {
            let v = n.attribute("data-value").unwrap_or_else(|| panic!("{}: a bar without data-value", path.display()));
            v.parse::<f64>().unwrap_or_else(|e| panic!("{}: data-value {v:?}: {e}", path.display()))
        })
        .collect()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// `a` equals `b` within `rel` of `b`.
fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs()
}

fn svg_texts(path: &Path, class: &str) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let opts = roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(&text, opts).unwrap_or_else(|e| panic!("{} is not valid XML: {e}", path.display()));
    assert_eq!(doc.root_element().tag_name().name(), "svg", "{}", path.display());
    doc.descendants()
        .filter(|n| n.has_tag_name("text") && n.attribute("class") == Some(class))
        .map(|n| n.text().unwrap_or("").to_string())
        .collect()
}

fn short(f: &Value) -> &str {
    f.as_str().map(|s| s.rsplit("::").next().unwrap_or(s)).unwrap_or("")
}

#[test]
fn demo_json_meets_acceptance() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvmprof"))
        .args(["demo", "--json", "--quiet", "--out"])
        .arg(dir.path())
        .output()
        .expect("run kvmprof demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kvmprof demo failed (it needs root, /dev/kvm and BPF; tinyvmm built next to kvmprof): {stderr}");
    let j: Value = serde_json::from_slice(&out.stdout).expect("demo --json prints one JSON object");
    assert_eq!(j["source"], profiler_daemon::live::detect_source().name());

    // Table 4: batching cuts IDE register-write exits by >= 90%, same disk contents.
    let t4 = &j["table4"];
    let (before, after) = (t4["before"].as_u64().unwrap(), t4["after"].as_u64().unwrap());
    assert!(before > 0, "{t4}");
    assert!(t4["reduction_pct"].as_f64().unwrap() >= 90.0, "{t4}");
    assert!((after as f64) <= before as f64 * 0.10, "{t4}");
    assert_eq!(t4["images_identical"], true, "{t4}");
    assert_eq!(t4["checksums_equal"], true, "{t4}");
    // The recording agrees with tinyvmm's own per-port counts.
    let c = &t4["cross_check"];
    assert_eq!(c["recorded_before"], c["tinyvmm_before"], "{c}");
    assert_eq!(c["recorded_after"], c["tinyvmm_after"], "{c}");
    // The reduction is computed from the two counts.
    let want_pct = 100.0 * (before - after) as f64 / before as f64;
    assert!((f(&t4["reduction_pct"]) - want_pct).abs() <= 1e-9, "reduction_pct vs {want_pct}: {t4}");
    // Table 4's rows are the IDE register writes: out exits on 0x1f1-0x1f7 and the doorbell
    // 0x510, with the source's port-I/O reason; their counts add up to the totals.
    let t4_rows = t4["rows"].as_array().unwrap();
    let ide_ports = ["0x1f1", "0x1f2", "0x1f3", "0x1f4", "0x1f5", "0x1f6", "0x1f7", "0x510"];
    for r in t4_rows {
        assert_eq!(r["reason"], common::io_reason(), "{r}");
        assert_eq!(r["direction"], "out", "{r}");
        assert!(ide_ports.contains(&r["port"].as_str().unwrap_or("")), "{r}");
    }
    assert_eq!(t4_rows.iter().map(|r| u(&r["count_before"])).sum::<u64>(), before, "{t4}");
    assert_eq!(t4_rows.iter().map(|r| u(&r["count_after"])).sum::<u64>(), after, "{t4}");

    // Fig. 7: 100 Hz cuts timer-related exits by >= 5x.
    let tm = &j["timer"];
    let e1000 = tm["hz1000"]["timer_exits"].as_u64().unwrap();
    let e100 = tm["hz100"]["timer_exits"].as_u64().unwrap();
    assert!(e100 > 0 && e1000 >= 5 * e100, "{tm}");
    // Measured, not estimated: the timer-disk workload's guest-measured throughput, with
    // the timer on during the I/O at both rates, and the data written intact.
    for hz in ["hz1000", "hz100"] {
        let v = &tm[hz];
        assert!(v["sectors_per_s"].as_f64().unwrap() > 0.0, "{hz}: {tm}");
        assert!(v["ticks"].as_u64().unwrap() > 0, "{hz}: no ticks during the I/O: {tm}");
        assert_eq!(v["sectors"], tm["sectors"], "{hz}: {tm}");
        // The recording sees exactly the timer-related exits tinyvmm counted (EOI writes and
        // interrupt windows).
        assert_eq!(u(&v["timer_exits"]), u(&v["tinyvmm_timer_exits"]), "{hz}: {tm}");
        assert_eq!(v["timer_exits"], v["by_function"].as_array().unwrap().iter().map(|r| u(&r["count"])).sum::<u64>(), "{hz}: {tm}");
    }
    assert_eq!(tm["images_identical"], true, "{tm}");
    assert_eq!(tm["hz1000"]["checksum"], tm["hz100"]["checksum"], "{tm}");

    // Fig. 8: verify_pmtmr_rate leads with calibration on, is absent with it off.
    let pm = &j["pmtmr"];
    assert_eq!(pm["on"]["top_function"], "verify_pmtmr_rate", "{pm}");
    assert_eq!(pm["on"]["hot_functions"][0]["function"], "verify_pmtmr_rate", "{pm}");
    assert!(pm["on"]["verify_pmtmr_rate_exits"].as_u64().unwrap() > 0, "{pm}");
    assert_eq!(pm["off"]["verify_pmtmr_rate_exits"], 0, "{pm}");
    assert!(pm["off"]["hot_functions"].as_array().unwrap().iter().all(|r| r["function"] != "verify_pmtmr_rate"), "{pm}");
    assert!(pm["on"]["boot_ms"].as_f64().unwrap() > pm["off"]["boot_ms"].as_f64().unwrap(), "{pm}");

    // Hot functions: the documented fields, sorted by count, each with its share of all time.
    let hot = j["hot_functions"].as_array().unwrap();
    assert!(!hot.is_empty());
    for k in ["rip", "function", "count", "time_ns", "percent"] {
        assert!(hot[0].get(k).is_some(), "hot_functions row lacks {k}: {}", hot[0]);
    }
    let (hot_exits, hot_time) = (u(&j["hot_total_exits"]), u(&j["hot_total_time_ns"]));
    assert!(hot_time > 0);
    assert!(hot.iter().map(|r| u(&r["count"])).sum::<u64>() <= hot_exits);
    assert!(hot.windows(2).all(|w| u(&w[0]["count"]) >= u(&w[1]["count"])), "sorted by count");
    for r in hot {
        let want = 100.0 * u(&r["time_ns"]) as f64 / hot_time as f64;
        assert!((f(&r["percent"]) - want).abs() <= 1e-9, "percent of {r} is not {want}");
        assert_eq!(u(&r["mean_ns"]), u(&r["time_ns"]) / u(&r["count"]), "{r}");
    }

    // Table 3: the caller of the IDE register-write exits (in ide_do_rw_disk) is the
    // function that called ide_do_rw_disk: the disk-write workload.
    let callers = j["callers"].as_array().unwrap();
    let ide: Vec<&Value> = callers.iter().filter(|r| short(&r["function"]) == "ide_do_rw_disk").collect();
    assert!(!ide.is_empty(), "no caller rows for ide_do_rw_disk: {:?} ({})", callers, j["callers_note"]);
    let n: u64 = ide.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    let to_workload: u64 = ide.iter().filter(|r| short(&r["caller_function"]) == "disk_write_workload").map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(to_workload, n, "ide_do_rw_disk's exits are not all attributed to disk_write_workload: {ide:?}");
    for k in ["rip", "function", "caller_rip", "caller_function", "count"] {
        assert!(callers[0].get(k).is_some(), "callers row lacks {k}");
    }

    // Plots: valid SVG, titled, with labelled axes; the flame graph has the hot functions.
    let plots = j["plots"].as_object().unwrap();
    for key in ["table4", "fig7_exits", "fig7_throughput", "fig8"] {
        let p = Path::new(plots[key].as_str().unwrap());
        assert_eq!(svg_texts(p, "title").len(), 1, "{key}: title");
        assert!(!svg_texts(p, "xlabel")[0].is_empty() && !svg_texts(p, "ylabel")[0].is_empty(), "{key}: axis labels");
        assert!(svg_texts(p, "xtick").len() >= 2, "{key}: categories");
    }
    let plot = |key: &str| Path::new(plots[key].as_str().unwrap()).to_path_buf();

    // Table 4's chart: per port (0x1f1..0x1f7, then 0x510) the out exits before and after,
    // which add up to the table's totals and match its rows port by port.
    let t4_bars = svg_bar_values(&plot("table4"));
    assert_eq!(svg_texts(&plot("table4"), "xtick"), ide_ports, "one category per port, in order");
    assert_eq!(t4_bars.len(), 2 * ide_ports.len(), "{t4_bars:?}");
    let (bars_before, bars_after): (Vec<f64>, Vec<f64>) = (t4_bars.iter().step_by(2).copied().collect(), t4_bars.iter().skip(1).step_by(2).copied().collect());
    assert_eq!(bars_before.iter().sum::<f64>(), before as f64, "{t4_bars:?} vs {t4}");
    assert_eq!(bars_after.iter().sum::<f64>(), after as f64, "{t4_bars:?} vs {t4}");
    for (i, port) in ide_ports.iter().enumerate() {
        let on_port = |k: &str| t4_rows.iter().filter(|r| r["port"] == *port).map(|r| u(&r[k])).sum::<u64>() as f64;
        assert_eq!((bars_before[i], bars_after[i]), (on_port("count_before"), on_port("count_after")), "port {port}");
    }
    // Fig. 7: the timer-related exits and the guest-measured throughput at 1000 and 100 Hz.
    assert_eq!(svg_bar_values(&plot("fig7_exits")), vec![u(&tm["hz1000"]["timer_exits"]) as f64, u(&tm["hz100"]["timer_exits"]) as f64]);
    let tp = svg_bar_values(&plot("fig7_throughput"));
    let want_tp = [f(&tm["hz1000"]["sectors_per_s"]), f(&tm["hz100"]["sectors_per_s"])];
    assert_eq!(tp.len(), 2, "{tp:?}");
    assert!(tp.iter().zip(&want_tp).all(|(a, b)| close(*a, *b, 1e-6)), "{tp:?} vs {want_tp:?}");
    // Fig. 8: per boot (calibration on, off): all exits, then the exits in verify_pmtmr_rate.
    assert_eq!(
        svg_bar_values(&plot("fig8")),
        vec![
            u(&pm["on"]["exits"]) as f64,
            u(&pm["on"]["verify_pmtmr_rate_exits"]) as f64,
            u(&pm["off"]["exits"]) as f64,
            u(&pm["off"]["verify_pmtmr_rate_exits"]) as f64,
        ]
    );

    let flame = std::fs::read_to_string(plots["flamegraph"].as_str().unwrap()).unwrap();
    assert!(flame.contains("ide_output_data") && flame.contains("ide_do_rw_disk"));
    let _ = svg_texts(Path::new(plots["flamegraph"].as_str().unwrap()), "none");
}
