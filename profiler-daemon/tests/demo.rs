//! `kvmprof demo --json`: the acceptance points, asserted from the JSON of one real
//! run (eBPF recording of tinyvmm on KVM). Needs root, /dev/kvm and BPF: without them this
//! test FAILS (it does not skip), with the demo's own one-line error.
use std::path::Path;
use std::process::Command;

use serde_json::Value;

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
        // The recording sees every EOI tinyvmm counted (exits in ack_irq).
        assert!(v["timer_exits"].as_u64().unwrap() >= v["eoi_writes"].as_u64().unwrap(), "{hz}: {tm}");
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

    // Hot functions: the documented fields.
    let hot = j["hot_functions"].as_array().unwrap();
    assert!(!hot.is_empty());
    for k in ["rip", "function", "count", "time_ns", "percent"] {
        assert!(hot[0].get(k).is_some(), "hot_functions row lacks {k}: {}", hot[0]);
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
    let flame = std::fs::read_to_string(plots["flamegraph"].as_str().unwrap()).unwrap();
    assert!(flame.contains("ide_output_data") && flame.contains("ide_do_rw_disk"));
    let _ = svg_texts(Path::new(plots["flamegraph"].as_str().unwrap()), "none");
}
