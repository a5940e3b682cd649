//! The network half's SVG charts (Fig. 3, Fig. 4, Fig. 9, exits per packet, Table 2), drawn
//! from its JSON section.
use super::net_result::*;
use super::*;
use crate::render::plot::{BarChart, Series, BLUE, GREEN, GREY, ORANGE};

pub(super) fn charts(n: &NetSection) -> Vec<(&'static str, &'static str, BarChart)> {
    let r = &n.rtt;
    let fig3 = BarChart {
        title: format!("Fig. 3: ping round trip, {} pings per path (guest driver: {})", r.count, r.mode),
        x_label: "path (lab network namespaces; the guest behind HostB's TAP)".into(),
        y_label: "mean RTT (ms)".into(),
        categories: r.paths.iter().map(|p| format!("{} - {}", p.from, p.to)).collect(),
        series: vec![Series { name: "mean RTT (ping)".into(), values: r.paths.iter().map(|p| p.avg_ms).collect(), color: BLUE }],
        note: Some(format!(
            "the VM's share of the HostA-guest round trip: ours {:.1}%, paper (Zhang et al., Fig. 3) ~{:.0}%",
            r.guest_share_pct,
            paper::FIG3_VIRT_SHARE_PCT
        )),
    };
    let s = &n.stream;
    let (irq, napi) = (&s.irq, &s.napi);
    let fig4 = BarChart {
        title: "Fig. 4: UDP stream throughput through tinyvmm's RTL8139".into(),
        x_label: "UDP stream (payload Mbit/s, medians)".into(),
        y_label: "Mbit/s".into(),
        categories: vec!["to the guest (net-rx)".into(), "from the guest (net-tx)".into()],
        series: vec![
            Series { name: "driver napi".into(), values: vec![napi.to_guest_mbit_s, napi.from_guest_mbit_s], color: BLUE },
            Series { name: "driver irq (no NAPI)".into(), values: vec![irq.to_guest_mbit_s, irq.from_guest_mbit_s], color: ORANGE },
        ],
        note: Some("paper Fig. 4 compares virtual NICs on a 2010 host: shape only, one NIC here".into()),
    };
    let norm = |irq: f64, napi: f64| if napi > 0.0 { 100.0 * irq / napi } else { 0.0 };
    let fig9 = BarChart {
        title: "Fig. 9: removing NAPI from the guest driver (napi = 100)".into(),
        x_label: "test (medians)".into(),
        y_label: "throughput / rate, % of napi".into(),
        categories: vec!["UDP stream to guest".into(), "UDP stream from guest".into(), "UDP request/response".into()],
        series: vec![
            Series { name: "napi".into(), values: vec![100.0; 3], color: BLUE },
            Series {
                name: "irq (no NAPI)".into(),
                values: vec![norm(irq.to_guest_mbit_s, napi.to_guest_mbit_s), norm(irq.from_guest_mbit_s, napi.from_guest_mbit_s), norm(irq.rr_per_s, napi.rr_per_s)],
                color: ORANGE,
            },
            Series { name: "paper: irq".into(), values: vec![100.0 + paper::FIG9_NO_NAPI_GAIN_PCT; 3], color: GREY },
        ],
        note: Some(format!("paper (Zhang et al., Fig. 9): +{:.0}% without NAPI in each test", paper::FIG9_NO_NAPI_GAIN_PCT)),
    };
    let exits = BarChart {
        title: "VM exits per packet, driver irq vs napi".into(),
        x_label: "test (exits per datagram; per transaction for request/response)".into(),
        y_label: "VM exits per packet".into(),
        categories: vec!["UDP stream to guest".into(), "UDP stream from guest".into(), "UDP request/response".into()],
        series: vec![
            Series { name: "napi".into(), values: vec![napi.to_guest_exits_per_packet, napi.from_guest_exits_per_packet, napi.rr_exits_per_transaction], color: BLUE },
            Series { name: "irq".into(), values: vec![irq.to_guest_exits_per_packet, irq.from_guest_exits_per_packet, irq.rr_exits_per_transaction], color: ORANGE },
        ],
        note: Some("recorded by kvmprof during the traffic, console left out; the paper gives no exits per packet".into()),
    };
    let h = &n.hot_functions;
    let shown: Vec<&HotFn> = h.rows.iter().take(6).collect();
    let table2 = BarChart {
        title: format!("Table 2: hot guest functions, {}", h.run),
        x_label: "guest function".into(),
        y_label: "VM exits (traps)".into(),
        categories: shown.iter().map(|r| short_fn(r.function.as_deref().unwrap_or("?")).to_string()).collect(),
        series: vec![Series { name: "exits".into(), values: shown.iter().map(|r| r.count as f64).collect(), color: GREEN }],
        note: Some(format!("paper (Zhang et al., Table 2): {}", paper::TABLE2_HOT_FUNCTIONS.join(", "))),
    };
    vec![
        ("net_fig3", "fig3-rtt.svg", fig3),
        ("net_fig4", "fig4-udp-stream.svg", fig4),
        ("net_fig9", "fig9-no-napi.svg", fig9),
        ("net_exits_per_packet", "net-exits-per-packet.svg", exits),
        ("net_table2", "table2-net-hot-functions.svg", table2),
    ]
}

/// Writes the charts into `out`; returns (plot name, path) for the demo JSON's `plots`.
pub(super) fn write_plots(out: &Path, n: &NetSection) -> Result<Vec<(String, String)>> {
    let mut v = Vec::new();
    for (key, file, chart) in charts(n) {
        let p = out.join(file);
        write_file(&p, chart.to_svg().as_bytes())?;
        v.push((key.to_string(), p.display().to_string()));
    }
    Ok(v)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::demo::net_analysis::{no_napi_change, summarize, verdict};

    fn stream(direction: &'static str, mbit_s: f64, per_packet: f64) -> Stream {
        Stream {
            direction,
            datagrams_sent: 10,
            datagrams_received: 10,
            payload_bytes: 100,
            bytes_sent: 1000,
            bytes_received: 1000,
            out_of_order: 0,
            bad_checksums: 0,
            seconds: 1.0,
            mbit_s,
            datagrams_per_s: 10.0,
            exits: PacketExits { packets: 10, exits: (per_packet * 10.0) as u64, per_packet, nic_exits: 50, nic_per_packet: 5.0, irq_path_exits: 20, irq_path_per_packet: 2.0, exit_time_ns: 1 },
            nic: NicCounts { rx_frames: 10, interrupts: 10, tinyvmm_register_exits: 70, recorded_register_exits: 70, ..NicCounts::default() },
        }
    }

    fn runs(mode: &'static str, k: f64) -> ModeRuns {
        ModeRuns {
            mode,
            to_guest: stream("to-guest", 2.0 * k, 9.0),
            from_guest: stream("from-guest", 3.0 * k, 7.0),
            rr: RequestResponse { transactions: 50, payload_bytes: 100, seconds: 1.0, per_s: 50.0 * k, mean_us: 20_000.0, exits: stream("rr", 0.0, 30.0).exits },
        }
    }

    /// A network section with made-up numbers: irq at `k` times napi's throughput.
    pub(in crate::demo) fn sample(k: f64) -> NetSection {
        let rounds = vec![Round { irq: runs("irq", k), napi: runs("napi", 1.0) }];
        let irq = summarize("irq", &rounds, |r| &r.irq);
        let napi = summarize("napi", &rounds, |r| &r.napi);
        let change = no_napi_change(&irq, &napi);
        let path = |from, to, avg_ms| RttPath { from, to, address: "198.18.1.2".into(), sent: 5, received: 5, min_ms: avg_ms / 2.0, avg_ms, max_ms: avg_ms * 2.0, mdev_ms: 0.1 };
        let hot = |f: &str, count| HotFn { rip: Some("0x100".into()), function: Some(format!("tinyvmm_guest::net::rtl8139::{f}")), reason: "IO".into(), count, time_ns: count * 10, percent: 10.0, mean_ns: 10, p50_ns: 10, p99_ns: 10 };
        NetSection {
            setup: NetSetup { lab: "l".into(), rtt: "r".into(), stream: "s".into(), exits: "e".into(), hot_functions: "h".into() },
            paper: NetPaper::default(),
            rtt: Rtt { mode: "napi", count: 5, interval_ms: 20.0, paths: vec![path("HostA", "HostB", 0.05), path("HostB", "guest", 2.0), path("HostA", "guest", 2.1)], guest_share_pct: 97.6 },
            stream: NetStream { verdict: verdict(&change, 1), irq, napi, no_napi_change_pct: change, rounds },
            hot_functions: NetHot { run: "net-rx".into(), rows: vec![hot("ioread16", 30), hot("iowrite16", 20)], total_exits: 60, total_time_ns: 600, paper_functions_found: vec!["ioread16".into(), "iowrite16".into()] },
        }
    }

    #[test]
    fn charts_plot_the_section_numbers() {
        let n = sample(0.5);
        let charts = charts(&n);
        let get = |k: &str| charts.iter().find(|c| c.0 == k).map(|c| &c.2).unwrap();
        assert_eq!(get("net_fig3").series[0].values, vec![0.05, 2.0, 2.1]);
        assert_eq!(get("net_fig4").series[0].values, vec![2.0, 3.0]);
        assert_eq!(get("net_fig4").series[1].values, vec![1.0, 1.5]);
        assert_eq!(get("net_fig9").series[1].values, vec![50.0, 50.0, 50.0]);
        assert_eq!(get("net_fig9").series[2].values, vec![160.0; 3]);
        assert_eq!(get("net_table2").categories, vec!["ioread16", "iowrite16"]);
        assert_eq!(n.stream.no_napi_change_pct.udp_rr, -50.0);
        assert!(n.stream.verdict.starts_with("removing NAPI does not help here"), "{}", n.stream.verdict);
    }

    #[test]
    fn text_has_ours_and_the_papers() {
        let mut s = String::new();
        crate::demo::net_text::render(&mut s, &sample(1.7), 6);
        assert!(s.contains("6. Fig. 3") && s.contains("7. Fig. 4 / Fig. 9") && s.contains("8. Table 2"), "{s}");
        assert!(s.contains("paper: ~33%") && s.contains("paper: +60% each") && s.contains("ioread16, iowrite16, ioread32, ioread8"), "{s}");
        assert!(s.contains("removing NAPI helps here too"), "{s}");
        assert!(s.contains("recorded = tinyvmm's NIC counters: yes"), "{s}");
    }
}
