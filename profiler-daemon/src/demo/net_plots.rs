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
