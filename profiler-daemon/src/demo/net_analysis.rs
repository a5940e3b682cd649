//! What the network half reads out of profiles and counters: exits per packet, the NIC
//! cross-check, ping summaries, medians and the verdict on NAPI. Numbers in, numbers out.
use tinyvmm_abi::stats::RunStats;

use super::net_result::*;
use crate::model::{Direction, Exit, Profile};

/// tinyvmm's NIC: I/O base 0xc000, 0x100 ports (`tinyvmm run --help`).
pub const NIC_BASE: u16 = 0xc000;
pub const NIC_PORTS: u16 = 0x100;
/// RTL8139 interrupt mask and status registers (offsets).
pub const NIC_IMR: u16 = 0x3c;
pub const NIC_ISR: u16 = 0x3e;
/// The console (COM1): its exits are the result line being printed, not packet work.
pub const CONSOLE_PORT: u16 = 0x3f8;
/// The PICs' command ports: EOIs.
const PIC_COMMAND: [u16; 2] = [0x20, 0xa0];

pub fn is_nic_port(port: u16) -> bool {
    (NIC_BASE..NIC_BASE + NIC_PORTS).contains(&port)
}

fn port_of(e: &Exit) -> Option<(Direction, u16)> {
    e.access.port()
}

fn is_irq_window(e: &Exit) -> bool {
    let n = e.reason.name();
    n.contains("WINDOW") || n == "VINTR"
}

/// The interrupt path: ISR/IMR accesses, EOIs written to a PIC, interrupt-window exits.
pub fn is_irq_path(e: &Exit) -> bool {
    match port_of(e) {
        Some((_, p)) if p == NIC_BASE + NIC_ISR || p == NIC_BASE + NIC_IMR => true,
        Some((Direction::Out, p)) => PIC_COMMAND.contains(&p),
        Some(_) => false,
        None => is_irq_window(e),
    }
}

fn per(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}

/// Exits of one traffic phase (a difference of two snapshots) per packet.
pub fn packet_exits(phase: &Profile, packets: u64) -> PacketExits {
    let count = |keep: &dyn Fn(&Exit) -> bool| phase.exits.iter().filter(|e| keep(e)).map(|e| e.stats.count).sum::<u64>();
    let not_console = |e: &Exit| port_of(e).is_none_or(|(_, p)| p != CONSOLE_PORT);
    let exits = count(&not_console);
    let nic_exits = count(&|e| port_of(e).is_some_and(|(_, p)| is_nic_port(p)));
    let irq_path_exits = count(&is_irq_path);
    PacketExits {
        packets,
        exits,
        per_packet: per(exits, packets),
        nic_exits,
        nic_per_packet: per(nic_exits, packets),
        irq_path_exits,
        irq_path_per_packet: per(irq_path_exits, packets),
        exit_time_ns: phase.exits.iter().filter(|e| not_console(e)).map(|e| e.stats.total_ns).sum(),
    }
}

/// tinyvmm's NIC counters beside the recorded exits on the NIC's ports, whole run.
pub fn nic_counts(whole_run: &Profile, stats: &RunStats) -> NicCounts {
    let recorded = whole_run.exits.iter().filter(|e| port_of(e).is_some_and(|(_, p)| is_nic_port(p))).map(|e| e.stats.count).sum();
    match &stats.nic {
        Some(n) => NicCounts {
            rx_frames: n.rx_frames,
            tx_frames: n.tx_frames,
            rx_dropped: n.rx_dropped_ring_full + n.rx_dropped_disabled + n.rx_dropped_oversized,
            interrupts: n.interrupts,
            tinyvmm_register_exits: n.registers.iter().map(|r| r.reads + r.writes).sum(),
            recorded_register_exits: recorded,
        },
        None => NicCounts { recorded_register_exits: recorded, ..NicCounts::default() },
    }
}

/// `ping -q` output: "N packets transmitted, M received, ..." and
/// "rtt min/avg/max/mdev = a/b/c/d ms". With no reply there is no rtt line: times are 0.
pub fn parse_ping(out: &str) -> Option<(u64, u64, [f64; 4])> {
    let counts = out.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = counts.split(',').map(|p| p.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()));
    let sent = nums.next()??;
    let received = nums.next()??;
    let mut t = [0.0; 4];
    if let Some(l) = out.lines().find(|l| l.starts_with("rtt ") || l.starts_with("round-trip")) {
        let vals = l.split('=').nth(1)?.split_whitespace().next()?;
        for (i, v) in vals.split('/').enumerate().take(4) {
            t[i] = v.parse().ok()?;
        }
    }
    Some((sent, received, t))
}

/// `100 × (to_guest − to_host) / to_guest`, or 0 without a round trip to the guest.
pub fn guest_share_pct(host_to_host_ms: f64, host_to_guest_ms: f64) -> f64 {
    if host_to_guest_ms > 0.0 {
        100.0 * (host_to_guest_ms - host_to_host_ms) / host_to_guest_ms
    } else {
        0.0
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// One mode's medians over the rounds (`pick` chooses the mode's runs of a round).
pub fn summarize(mode: &'static str, rounds: &[Round], pick: fn(&Round) -> &ModeRuns) -> ModeSummary {
    let m = |f: &dyn Fn(&ModeRuns) -> f64| median(rounds.iter().map(|r| f(pick(r))).collect());
    ModeSummary {
        mode,
        rounds: rounds.len(),
        to_guest_mbit_s: m(&|r| r.to_guest.mbit_s),
        from_guest_mbit_s: m(&|r| r.from_guest.mbit_s),
        rr_per_s: m(&|r| r.rr.per_s),
        to_guest_exits_per_packet: m(&|r| r.to_guest.exits.per_packet),
        from_guest_exits_per_packet: m(&|r| r.from_guest.exits.per_packet),
        rr_exits_per_transaction: m(&|r| r.rr.exits.per_packet),
        to_guest_nic_exits_per_packet: m(&|r| r.to_guest.exits.nic_per_packet),
        from_guest_nic_exits_per_packet: m(&|r| r.from_guest.exits.nic_per_packet),
        rr_nic_exits_per_transaction: m(&|r| r.rr.exits.nic_per_packet),
        to_guest_interrupts_per_packet: m(&|r| per(r.to_guest.nic.interrupts, r.to_guest.datagrams_received)),
    }
}

fn change(napi: f64, irq: f64) -> f64 {
    if napi > 0.0 {
        100.0 * (irq - napi) / napi
    } else {
        0.0
    }
}

/// What removing NAPI (napi → irq) changed, in %.
pub fn no_napi_change(irq: &ModeSummary, napi: &ModeSummary) -> NoNapiChange {
    NoNapiChange {
        udp_stream_to_guest: change(napi.to_guest_mbit_s, irq.to_guest_mbit_s),
        udp_stream_from_guest: change(napi.from_guest_mbit_s, irq.from_guest_mbit_s),
        udp_rr: change(napi.rr_per_s, irq.rr_per_s),
    }
}

/// Below this a difference of medians is within the host's run-to-run noise (ENVIRONMENT.md:
/// ±10 % on exit-bound guests).
pub const NOISE_PCT: f64 = 10.0;

/// The honest sentence: did removing NAPI help here, as it did in the paper?
pub fn verdict(c: &NoNapiChange, rounds: usize) -> String {
    let word = |v: f64| {
        if v >= NOISE_PCT {
            "helps"
        } else if v <= -NOISE_PCT {
            "hurts"
        } else {
            "makes no difference beyond noise"
        }
    };
    let parts = [("UDP stream to the guest", c.udp_stream_to_guest), ("UDP stream from the guest", c.udp_stream_from_guest), ("UDP request/response", c.udp_rr)];
    let helped = parts.iter().filter(|(_, v)| *v >= NOISE_PCT).count();
    let lead = match helped {
        3 => "removing NAPI helps here too, as in the paper",
        0 => "removing NAPI does not help here, unlike the paper",
        _ => "removing NAPI helps here only in part",
    };
    let detail: Vec<String> = parts.iter().map(|(n, v)| format!("{n} {v:+.1}% ({})", word(*v))).collect();
    let caution = if rounds < 3 { "; rounds disagree on this host: trust the medians of scripts/bench-net.sh (5 rounds), not one" } else { "" };
    format!(
        "{lead}: {} (medians of {rounds} round{}; paper: +{:.0}% each; within ±{NOISE_PCT:.0}% counts as noise on this host{caution})",
        detail.join(", "),
        if rounds == 1 { "" } else { "s" },
        super::paper::FIG9_NO_NAPI_GAIN_PCT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summary() {
        let out = "PING 198.18.1.2 (198.18.1.2) 56(84) bytes of data.\n\n--- 198.18.1.2 ping statistics ---\n20 packets transmitted, 19 received, 5% packet loss, time 195ms\nrtt min/avg/max/mdev = 0.412/1.305/3.050/0.610 ms\n";
        assert_eq!(parse_ping(out), Some((20, 19, [0.412, 1.305, 3.050, 0.610])));
        let none = "--- x ping statistics ---\n3 packets transmitted, 0 received, 100% packet loss, time 2040ms\n";
        assert_eq!(parse_ping(none), Some((3, 0, [0.0; 4])));
        let err = "--- x ping statistics ---\n3 packets transmitted, 0 received, +3 errors, 100% packet loss\n";
        assert_eq!(parse_ping(err), Some((3, 0, [0.0; 4])));
        assert_eq!(parse_ping("ping: connect: Network is unreachable\n"), None);
    }

    #[test]
    fn share_and_medians() {
        assert!((guest_share_pct(0.05, 0.15) - 66.666_666).abs() < 1e-3);
        assert_eq!(guest_share_pct(0.05, 0.0), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn verdict_is_honest() {
        let c = NoNapiChange { udp_stream_to_guest: -20.0, udp_stream_from_guest: 2.0, udp_rr: -1.0 };
        let v = verdict(&c, 1);
        assert!(v.starts_with("removing NAPI does not help here, unlike the paper"), "{v}");
        assert!(v.contains("UDP stream to the guest -20.0% (hurts)") && v.contains("+2.0% (makes no difference beyond noise)"), "{v}");
        let all = NoNapiChange { udp_stream_to_guest: 60.0, udp_stream_from_guest: 15.0, udp_rr: 11.0 };
        assert!(verdict(&all, 3).starts_with("removing NAPI helps here too"));
        assert!(!verdict(&all, 3).contains("rounds disagree") && v.contains("rounds disagree"));
    }
}
