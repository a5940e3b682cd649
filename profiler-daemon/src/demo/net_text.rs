//! The network half's text: Fig. 3, Fig. 4 / Fig. 9 and Table 2 beside the paper's figures.
use std::fmt::Write as _;

use super::net_result::*;
use super::*;

fn ok(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

/// Sections 6–8; `first` is the number of the first.
pub(super) fn render(s: &mut String, n: &NetSection, first: usize) {
    let r = &n.rtt;
    let _ = writeln!(s, "{first}. Fig. 3: ping round trips (ping -c {} -i {}), guest driver {}", r.count, r.interval_ms / 1000.0, r.mode);
    let _ = writeln!(s, "   {:<18} {:>12} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}", "path", "address", "sent", "recv", "min (ms)", "avg (ms)", "max (ms)", "mdev (ms)");
    for p in &r.paths {
        let _ = writeln!(
            s,
            "   {:<18} {:>12} {:>6} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            format!("{} - {}", p.from, p.to),
            p.address,
            p.sent,
            p.received,
            p.min_ms,
            p.avg_ms,
            p.max_ms,
            p.mdev_ms
        );
    }
    let _ = writeln!(
        s,
        "   ours: the hop into the VM is {:.1}% of the HostA-guest round trip   paper: ~{:.0}% of the ping-pong RTT is virtualization",
        r.guest_share_pct,
        paper::FIG3_VIRT_SHARE_PCT
    );
    let _ = writeln!(s, "   (share = (HostA-guest - HostA-HostB) / HostA-guest, mean RTTs; every guest instruction is emulated on this host, and kvmprof records during the pings)");
    let _ = writeln!(s);

    let st = &n.stream;
    let _ = writeln!(s, "{}. Fig. 4 / Fig. 9: UDP streams and request/response, guest driver irq (no NAPI) vs napi, medians of {} round(s)", first + 1, st.rounds.len());
    let _ = writeln!(
        s,
        "   {:<6} {:>13} {:>15} {:>10} {:>14} {:>16} {:>11} {:>13}",
        "driver", "to guest Mb/s", "from guest Mb/s", "RR per s", "exits/pkt to", "exits/pkt from", "exits/RR", "irq/pkt to"
    );
    for m in [&st.irq, &st.napi] {
        let _ = writeln!(
            s,
            "   {:<6} {:>13.3} {:>15.3} {:>10.1} {:>14.2} {:>16.2} {:>11.2} {:>13.3}",
            m.mode,
            m.to_guest_mbit_s,
            m.from_guest_mbit_s,
            m.rr_per_s,
            m.to_guest_exits_per_packet,
            m.from_guest_exits_per_packet,
            m.rr_exits_per_transaction,
            m.to_guest_interrupts_per_packet
        );
    }
    let c = &st.no_napi_change_pct;
    let _ = writeln!(
        s,
        "   ours, removing NAPI (napi -> irq): stream to guest {:+.1}%, stream from guest {:+.1}%, request/response {:+.1}%   paper: +{:.0}% each",
        c.udp_stream_to_guest,
        c.udp_stream_from_guest,
        c.udp_rr,
        paper::FIG9_NO_NAPI_GAIN_PCT
    );
    let _ = writeln!(s, "   verdict: {}", st.verdict);
    if let Some(last) = st.rounds.last() {
        for m in [&last.irq, &last.napi] {
            let to = &m.to_guest;
            let from = &m.from_guest;
            let _ = writeln!(
                s,
                "   last round, {}: to guest {}/{} datagrams, {} out of order, {} bad checksums; from guest {}/{} datagrams, {} out of order, {} bad checksums; {} transactions",
                m.mode,
                to.datagrams_received,
                to.datagrams_sent,
                to.out_of_order,
                to.bad_checksums,
                from.datagrams_received,
                from.datagrams_sent,
                from.out_of_order,
                from.bad_checksums,
                m.rr.transactions
            );
            let _ = writeln!(
                s,
                "     NIC register exits per packet: to {:.2}, from {:.2}, RR {:.2}; interrupt path (ISR/IMR, EOI, windows): to {:.2}, from {:.2}, RR {:.2}; recorded = tinyvmm's NIC counters: {}",
                to.exits.nic_per_packet,
                from.exits.nic_per_packet,
                m.rr.exits.nic_per_packet,
                to.exits.irq_path_per_packet,
                from.exits.irq_path_per_packet,
                m.rr.exits.irq_path_per_packet,
                ok(to.nic.recorded_register_exits == to.nic.tinyvmm_register_exits && from.nic.recorded_register_exits == from.nic.tinyvmm_register_exits)
            );
        }
    }
    let _ = writeln!(s, "   paper Fig. 4 (virtual NICs compared): {}", paper::NET_SHAPE_ONLY);
    let _ = writeln!(s);

    let h = &n.hot_functions;
    let _ = writeln!(s, "{}. Table 2: hot guest functions, {}", first + 2, h.run);
    let _ = writeln!(s, "   {:<20} {:>9} {:>10} {:>8}  {:<8} function", "trap address", "count", "time (s)", "time %", "reason");
    for r in &h.rows {
        let _ = writeln!(
            s,
            "   {:<20} {:>9} {:>10.6} {:>7.2}%  {:<8} {}",
            r.rip.as_deref().unwrap_or("-"),
            r.count,
            r.time_ns as f64 / 1e9,
            r.percent,
            r.reason,
            r.function.as_deref().map(short_fn).unwrap_or("?")
        );
    }
    let _ = writeln!(s, "   {} exits, {:.6} s in exits", h.total_exits, h.total_time_ns as f64 / 1e9);
    let _ = writeln!(
        s,
        "   paper: {} lead its Table 2 (the RTL8139 driver's register accessors); here: {}",
        paper::TABLE2_HOT_FUNCTIONS.join(", "),
        if h.paper_functions_found.is_empty() { "none of them".to_string() } else { h.paper_functions_found.join(", ") }
    );
    let _ = writeln!(s);
}
