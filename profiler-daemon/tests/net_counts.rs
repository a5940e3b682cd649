//! Exact NIC exits, recorded live: the guest's RTL8139 driver (vmm/guest/src/net/rtl8139.rs)
//! receiving K datagrams from HostA on the test network, followed by `kvmprof record --pid`.
//!
//! From the driver's source, in `irq` mode every received packet costs, in
//! `rtl8139_interrupt`: `ioread16(ISR)`, `iowrite16(ISR)` (the ack) and the EOI (`ack_irq`),
//! and in `rtl8139_rx_one`: `iowrite16(CAPR)`: exactly K of each at their RIPs. In `napi`
//! mode the interrupt handler runs once per burst, not per packet, so a burst costs fewer
//! interrupt-path exits per packet. Needs root, KVM, BPF, tracefs, TAP and namespaces:
//! fails, never skips, without them.
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use vmm::abi::net::{GUEST_IP, STREAM_PORT};
use vmm::abi::stats::RunStats;
use vmm::net::lab::Lab;
use vmm::net::peer::{self, GuestConsole};

const NIC: u64 = 0xc000;
const ISR: u64 = NIC + 0x3e;
const IMR: u64 = NIC + 0x3c;
const CAPR: u64 = NIC + 0x38;

/// One recorded run of `net-rx` receiving `k` datagrams (sent at `rate` per second, or
/// as one burst), and its `report --by caller` rows.
struct Recorded {
    rows: Vec<serde_json::Value>,
    stats: RunStats,
}

impl Recorded {
    /// Exits in `function` on `port` in `direction`, whose caller is `caller`.
    fn count(&self, function: &str, direction: &str, port: u64, caller: &str) -> u64 {
        self.rows
            .iter()
            .filter(|r| {
                r["function"] == function
                    && r["direction"] == direction
                    && r["port"].as_str() == Some(&format!("{port:#x}"))
                    && r["caller_function"].as_str().is_some_and(|c| c.ends_with(caller))
            })
            .map(|r| r["count"].as_u64().unwrap())
            .sum()
    }

    /// Every exit whose caller is `caller` (the interrupt path: caller `rtl8139_interrupt`).
    fn called_from(&self, caller: &str) -> u64 {
        self.rows
            .iter()
            .filter(|r| r["caller_function"].as_str().is_some_and(|c| c.ends_with(caller)))
            .map(|r| r["count"].as_u64().unwrap())
            .sum()
    }
}

fn record_net_rx(dir: &Path, mode: &str, k: u64, rate: Option<f64>) -> Recorded {
    let tinyvmm = Path::new(KVMPROF).with_file_name("tinyvmm");
    assert!(tinyvmm.exists(), "{} not built: cargo build --release -p vmm", tinyvmm.display());
    let lab = Lab::new().expect("test network");
    let (map, stats, rec, elf) = (dir.join(format!("{mode}.map")), dir.join(format!("{mode}.json")), dir.join(format!("{mode}.kvmprof")), dir.join("guest.elf"));
    let o = run(path_str(&tinyvmm), &["guest-elf", "-o", path_str(&elf)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let count = k.to_string();
    let mut vm = lab
        .tinyvmm(&tinyvmm)
        .args(["run", "--net", &lab.net_arg(), "--nic-mode", mode, "--workload", "net-rx", "--count", &count, "--seconds", "10"])
        .args(["--skip-pmtmr-calibration", "--memory-map", path_str(&map), "--stats-json", path_str(&stats)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tinyvmm in HostB");
    let mut console = GuestConsole::new(vm.stdout.take().unwrap());
    assert!(console.wait_ready(Duration::from_secs(20)), "guest not ready: {:?}", console.lines());

    let mut kvmprof = Command::new(KVMPROF)
        .args(["record", "-o", path_str(&rec), "--pid", &vm.id().to_string(), "--guest-memory-map", path_str(&map)])
        .stderr(Stdio::piped())
        .spawn()
        .expect("kvmprof record");
    // Send only once the programs are attached (kvmprof says so on stderr).
    let mut err = BufReader::new(kvmprof.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("kvmprof: recording") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "kvmprof ended before recording");
    }
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));

    let sock = Lab::udp_socket(&lab.host_a, "0.0.0.0:0").expect("socket in HostA");
    let sent = peer::send_stream(&sock, SocketAddr::from((GUEST_IP, STREAM_PORT)), k, 64, rate).expect("send");
    assert_eq!(sent.datagrams, k);
    let vm_status = vm.wait().unwrap();
    assert!(vm_status.success(), "tinyvmm: {vm_status}, console {:?}", console.lines());
    let st = kvmprof.wait().unwrap();
    assert!(st.success(), "kvmprof record: {st}");
    let stats: RunStats = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let report = report_json(&rec, &["--by", "caller", "--vmlinux", path_str(&elf)]);
    Recorded { rows: rows(&report).clone(), stats }
}

#[test]
fn irq_mode_takes_exactly_the_drivers_exits_per_packet_and_napi_fewer() {
    require_live();
    let dir = tmpdir();
    const K: u64 = 200;
    let mut per_packet = Vec::new();
    for mode in ["irq", "napi"] {
        // One burst: HostA sends as fast as it can; the ring (32 KiB) holds it whole.
        let r = record_net_rx(dir.path(), mode, K, None);
        let g = r.stats.guest.as_ref().expect("guest report");
        let nic = r.stats.nic.as_ref().expect("NIC counters");
        assert_eq!((g.datagrams, g.bad_seq, g.bad_checksum), (Some(K), Some(0), Some(0)), "{g:?}");
        // Before the guest said it was ready (and so before recording): the gateway's ARP reply.
        assert_eq!(nic.rx_dropped_ring_full, 0, "{nic:?}");
        assert!((K + 1..=K + 3).contains(&nic.rx_frames), "the K datagrams and the gateway's ARP reply: {nic:?}");
        assert_eq!(g.rx_queue_drops, Some(0), "{g:?}");
        let isr_reads = r.count("ioread16", "in", ISR, "rtl8139_interrupt");
        let isr_acks = r.count("iowrite16", "out", ISR, "rtl8139_interrupt");
        let capr = r.count("iowrite16", "out", CAPR, "rtl8139_rx_one");
        let eois = r.count("ack_irq", "out", 0x20, "rtl8139_interrupt");
        let imr = r.count("iowrite16", "out", IMR, "rtl8139_interrupt");
        // Interrupts while recording: one EOI each (the guest's own count also has the
        // ARP reply's, before it was ready).
        let interrupts = eois;
        assert!(g.rx_interrupts.unwrap() > interrupts, "{g:?}");
        let path = r.called_from("rtl8139_interrupt");
        println!(
            "{mode}: {K} packets, {interrupts} interrupts, ISR reads {isr_reads}, ISR acks {isr_acks}, IMR writes {imr}, EOIs {eois}, CAPR writes {capr}; interrupt-path exits {path} = {:.3} per packet",
            path as f64 / K as f64
        );
        assert_eq!(capr, K, "{mode}: one CAPR write per packet in rtl8139_rx_one");
        assert_eq!(isr_reads, eois, "{mode}: one ISR read and one EOI per interrupt");
        if mode == "irq" {
            assert_eq!((interrupts, isr_reads, isr_acks, eois, imr), (K, K, K, K, 0), "irq: per packet one interrupt, ISR read, ack, EOI");
            assert_eq!(path, 3 * K, "irq: the handler's exits are exactly ISR read + ack + EOI per packet (its rx_one's CAPR is called from rtl8139_rx_one)");
        } else {
            assert_eq!((isr_acks, imr), (0, interrupts), "napi: the handler masks (IMR) and does not ack");
            assert_eq!(path, 3 * interrupts, "napi: ISR read + IMR mask + EOI per interrupt");
        }
        per_packet.push(path as f64 / K as f64);
    }
    println!("interrupt-path exits per packet: irq {:.3}, napi {:.3}", per_packet[0], per_packet[1]);
    assert!(per_packet[1] < per_packet[0], "napi must take fewer interrupt-path exits per packet under a burst: {per_packet:?}");
}
