//! `kvmprof demo --json`: the acceptance points, asserted from the JSON of one real
//! run (eBPF recording of tinyvmm on KVM), both sections: disk (1-5) and net (6-8, in a test
//! network of namespaces and a TAP). Needs root, /dev/kvm, BPF, /dev/net/tun, `ip` and
//! `ping`: without them this test FAILS (it does not skip), with the demo's own one-line
//! error.
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
    assert_eq!(j["sections"], serde_json::json!(["disk", "net"]));
    check_net(&j);

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

/// `a` equals `want` up to float rounding.
fn same(a: &Value, want: f64) -> bool {
    (f(a) - want).abs() <= 1e-9 * want.abs().max(1.0)
}

/// Sections 6-8 (the defaults: 20 pings, 600 datagrams of 1024 bytes offered to the guest at
/// 1000/s, 200 from it, 1 round).
fn check_net(j: &Value) {
    let n = &j["net"];
    let (pings, to_guest, from_guest, size) = (20u64, 600u64, 200u64, 1024u64);

    // Fig. 3: every ping answered on all three paths; the share computed from the means.
    let r = &n["rtt"];
    let paths = r["paths"].as_array().unwrap();
    let names: Vec<(&str, &str)> = paths.iter().map(|p| (p["from"].as_str().unwrap(), p["to"].as_str().unwrap())).collect();
    assert_eq!(names, [("HostA", "HostB"), ("HostB", "guest"), ("HostA", "guest")], "{r}");
    assert_eq!(paths.iter().map(|p| p["address"].as_str().unwrap()).collect::<Vec<_>>(), ["198.18.0.2", "198.18.1.2", "198.18.1.2"]);
    for p in paths {
        assert_eq!((u(&p["sent"]), u(&p["received"])), (pings, pings), "{p}");
        assert!(f(&p["min_ms"]) > 0.0 && f(&p["min_ms"]) <= f(&p["avg_ms"]) && f(&p["avg_ms"]) <= f(&p["max_ms"]), "{p}");
    }
    let (ab, ag) = (f(&paths[0]["avg_ms"]), f(&paths[2]["avg_ms"]));
    assert!(same(&r["guest_share_pct"], 100.0 * (ag - ab) / ag), "{r}");
    assert_eq!(n["paper"]["fig3_virtualization_share_pct"], 33.0);

    // Fig. 4 / 9: one round, both modes; exact counts where the input is exact.
    let st = &n["stream"];
    let rounds = st["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 1, "{st}");
    for mode in ["irq", "napi"] {
        let m = &rounds[0][mode];
        assert_eq!(m["mode"], mode);
        for (dir, datagrams) in [("to_guest", to_guest), ("from_guest", from_guest)] {
            let s = &m[dir];
            assert_eq!(u(&s["datagrams_sent"]), datagrams, "{mode} {dir}: {s}");
            assert_eq!(u(&s["bytes_sent"]), datagrams * size, "{mode} {dir}: {s}");
            assert_eq!(u(&s["bad_checksums"]), 0, "{mode} {dir}: {s}");
            assert_eq!(u(&s["bytes_received"]), u(&s["datagrams_received"]) * size, "{mode} {dir}: {s}");
            assert!(f(&s["seconds"]) > 0.0, "{mode} {dir}: {s}");
            assert!(same(&s["mbit_s"], u(&s["bytes_received"]) as f64 * 8.0 / 1e6 / f(&s["seconds"])), "{mode} {dir}: {s}");
            // kvmprof's exits on the NIC's ports agree exactly with tinyvmm's own counters.
            let nic = &s["nic"];
            assert!(u(&nic["tinyvmm_register_exits"]) > 0, "{mode} {dir}: {nic}");
            assert_eq!(nic["recorded_register_exits"], nic["tinyvmm_register_exits"], "{mode} {dir}: {nic}");
            let e = &s["exits"];
            let packets = u(&e["packets"]);
            assert!(u(&e["nic_exits"]) > 0 && u(&e["nic_exits"]) <= u(&e["exits"]), "{mode} {dir}: {e}");
            assert!(same(&e["per_packet"], u(&e["exits"]) as f64 / packets as f64), "{mode} {dir}: {e}");
            assert!(same(&e["nic_per_packet"], u(&e["nic_exits"]) as f64 / packets as f64), "{mode} {dir}: {e}");
        }
        // From the guest: every datagram delivered to HostA, in order, intact, and one NIC
        // transmit each (the guest's ARP for its gateway is the one more).
        let tx = &m["from_guest"];
        assert_eq!((u(&tx["datagrams_received"]), u(&tx["out_of_order"])), (from_guest, 0), "{mode}: delivered = sent: {tx}");
        assert_eq!(u(&tx["exits"]["packets"]), from_guest, "{mode}: {tx}");
        assert!((from_guest..=from_guest + 1).contains(&u(&tx["nic"]["tx_frames"])), "{mode}: {tx}");
        // To the guest, offered above what it takes: every datagram reached the NIC, which
        // took it into the ring or dropped it for a full ring (plus the reply to the guest's
        // ARP); the guest received at most what was sent, each intact.
        let rx = &m["to_guest"];
        let at_nic = u(&rx["nic"]["rx_frames"]) + u(&rx["nic"]["rx_dropped"]);
        assert!((to_guest..=to_guest + 1).contains(&at_nic), "{mode}: {at_nic} frames reached the NIC for {to_guest} sent: {rx}");
        assert!(u(&rx["datagrams_received"]) > 0 && u(&rx["datagrams_received"]) <= u(&rx["nic"]["rx_frames"]), "{mode}: {rx}");
        assert_eq!(u(&rx["exits"]["packets"]), u(&rx["datagrams_received"]), "{mode}: {rx}");
        let rr = &m["rr"];
        assert!(u(&rr["transactions"]) > 0, "{mode}: {rr}");
        assert!(same(&rr["per_s"], u(&rr["transactions"]) as f64 / f(&rr["seconds"])), "{mode}: {rr}");
        assert_eq!(rr["exits"]["packets"], rr["transactions"], "{mode}: {rr}");
        // With one round the medians are that round's numbers.
        let sum = &st[mode];
        assert_eq!(u(&sum["rounds"]), 1);
        assert_eq!(f(&sum["to_guest_mbit_s"]), f(&m["to_guest"]["mbit_s"]));
        assert_eq!(f(&sum["from_guest_mbit_s"]), f(&m["from_guest"]["mbit_s"]));
        assert_eq!(f(&sum["rr_per_s"]), f(&rr["per_s"]));
        assert_eq!(f(&sum["to_guest_exits_per_packet"]), f(&m["to_guest"]["exits"]["per_packet"]));
    }
    // irq takes one interrupt per received packet at most; removing NAPI is judged in words.
    let (irq, napi) = (&st["irq"], &st["napi"]);
    let c = &st["no_napi_change_pct"];
    assert!(same(&c["udp_stream_to_guest"], 100.0 * (f(&irq["to_guest_mbit_s"]) - f(&napi["to_guest_mbit_s"])) / f(&napi["to_guest_mbit_s"])), "{st}");
    assert!(same(&c["udp_rr"], 100.0 * (f(&irq["rr_per_s"]) - f(&napi["rr_per_s"])) / f(&napi["rr_per_s"])), "{st}");
    let verdict = st["verdict"].as_str().unwrap();
    assert!(verdict.starts_with("removing NAPI") && verdict.contains("paper: +60%"), "{verdict}");

    // Table 2: by function from the napi stream to the guest, sorted; the paper's accessors.
    let h = &n["hot_functions"];
    let rows = h["rows"].as_array().unwrap();
    assert!(!rows.is_empty(), "{h}");
    assert!(rows.windows(2).all(|w| u(&w[0]["count"]) >= u(&w[1]["count"])), "sorted by count: {h}");
    assert!(rows.iter().map(|r| u(&r["count"])).sum::<u64>() <= u(&h["total_exits"]));
    let found: Vec<&str> = h["paper_functions_found"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for fname in &found {
        assert!(rows.iter().any(|r| short(&r["function"]) == *fname), "{fname} is not among the rows: {h}");
    }
    assert!(found.contains(&"ioread16"), "the driver's ioread16 (ISR reads) is not among the hot functions: {h}");

    // Plots: the numbers of the JSON, bar by bar.
    let plots = j["plots"].as_object().unwrap();
    let plot = |key: &str| Path::new(plots[key].as_str().unwrap_or_else(|| panic!("no plot {key}"))).to_path_buf();
    // Equal to the last bit or two: a value may be summed in another order for the plot.
    let same = |bars: Vec<f64>, json: Vec<f64>| bars.len() == json.len() && bars.iter().zip(&json).all(|(a, b)| close(*a, *b, 1e-12));
    let (fig3, rtt) = (svg_bar_values(&plot("net_fig3")), paths.iter().map(|p| f(&p["avg_ms"])).collect::<Vec<_>>());
    assert!(same(fig3.clone(), rtt.clone()), "{fig3:?} against {rtt:?}");
    let fig4 = svg_bar_values(&plot("net_fig4"));
    let stream = vec![f(&napi["to_guest_mbit_s"]), f(&irq["to_guest_mbit_s"]), f(&napi["from_guest_mbit_s"]), f(&irq["from_guest_mbit_s"])];
    assert!(same(fig4.clone(), stream.clone()), "{fig4:?} against {stream:?}");
    let fig9 = svg_bar_values(&plot("net_fig9"));
    assert_eq!(fig9.len(), 9, "{fig9:?}");
    assert_eq!((fig9[0], fig9[2]), (100.0, 160.0), "napi = 100, the paper's irq = 160: {fig9:?}");
    assert!(close(fig9[1], 100.0 * f(&irq["to_guest_mbit_s"]) / f(&napi["to_guest_mbit_s"]), 1e-9), "{fig9:?}");
    let epp = svg_bar_values(&plot("net_exits_per_packet"))[0];
    assert!(close(epp, f(&napi["to_guest_exits_per_packet"]), 1e-12), "{epp} against {}", napi["to_guest_exits_per_packet"]);
    let t2 = svg_bar_values(&plot("net_table2"));
    assert_eq!(t2, rows.iter().take(6).map(|r| u(&r["count"]) as f64).collect::<Vec<_>>());
    for key in ["net_fig3", "net_fig4", "net_fig9", "net_exits_per_packet", "net_table2"] {
        assert_eq!(svg_texts(&plot(key), "title").len(), 1, "{key}: title");
        assert!(svg_texts(&plot(key), "note")[0].contains("paper"), "{key}: the paper's figure beside ours");
    }
}
