//! The guest's network stack end to end, on the paper's test network (`vmm::net::lab`):
//! HostA and HostB as network namespaces, the guest behind a real TAP in HostB, tinyvmm run
//! inside HostB. Real `ping`, real sockets in HostA. Needs root, /dev/kvm, /dev/net/tun and
//! iproute2; fails, never skips, without them.
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use vmm::abi::net::{ECHO_PORT, GUEST_IP, HOST_A_IP, STREAM_PORT};
use vmm::abi::stats::RunStats;
use vmm::net::lab::Lab;
use vmm::net::peer::{self, GuestConsole};

fn guest_addr(port: u16) -> SocketAddr {
    SocketAddr::from((GUEST_IP, port))
}

/// tinyvmm running a network workload inside HostB, its console read by a thread.
struct Guest {
    child: Option<Child>,
    console: GuestConsole,
    stats: PathBuf,
    _dir: tempfile::TempDir,
}

impl Guest {
    fn start(lab: &Lab, args: &[&str]) -> Guest {
        let mut g = Guest::start_unready(lab, args);
        assert!(g.console.wait_ready(Duration::from_secs(20)), "the guest never printed @@net-ready: {:?}", g.console.lines());
        g
    }

    /// Starts it without waiting for the ready line (net-hostile never prints one).
    fn start_unready(lab: &Lab, args: &[&str]) -> Guest {
        common::require_kvm();
        let dir = tempfile::tempdir().unwrap();
        let stats = dir.path().join("stats.json");
        let mut child = lab
            .tinyvmm(std::path::Path::new(env!("CARGO_BIN_EXE_tinyvmm")))
            .args(["run", "--skip-pmtmr-calibration", "--net", &lab.net_arg(), "--stats-json"])
            .arg(&stats)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tinyvmm in HostB");
        let console = GuestConsole::new(child.stdout.take().unwrap());
        Guest { child: Some(child), console, stats, _dir: dir }
    }

    /// Waits for tinyvmm to end (successfully) and returns its statistics.
    fn finish(mut self) -> RunStats {
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stats: Option<RunStats> = std::fs::read(&self.stats).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let nic = stats.as_ref().and_then(|s| s.nic.clone());
        assert!(out.status.success(), "tinyvmm: {}\n{stderr}\nconsole: {:?}\nNIC: {nic:?}", out.status, self.console.lines());
        stats.expect("stats JSON")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_hundred_pings_from_host_a_get_a_hundred_replies() {
    let lab = Lab::new().expect("test network");
    let guest = Guest::start(&lab, &["--workload", "net-echo", "--seconds", "6"]);
    let out = Lab::exec(&lab.host_a, "ping")
        .args(["-c", "100", "-i", "0.01", "-W", "2", "-q", "198.18.1.2"])
        .output()
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(text.contains("100 packets transmitted, 100 received"), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let s = guest.finish();
    let g = s.guest.expect("guest report");
    assert_eq!(g.echo_requests, Some(100), "{g:?}");
    let nic = s.nic.expect("NIC counters");
    assert_eq!((nic.rx_dropped_ring_full, nic.dma_errors, nic.tx_errors), (0, 0, 0), "{nic:?}");
    // 100 echo replies, and the ARP requests for the gateway before the guest was ready
    // (one every half second until answered: HostB drops frames for up to a second after the
    // TAP's carrier comes up).
    assert!((101..=103).contains(&nic.tx_frames), "{nic:?}");
}

#[test]
fn net_rx_takes_a_stream_from_host_a_intact() {
    const N: u64 = 300;
    const SIZE: usize = 200;
    for mode in ["irq", "napi"] {
        let lab = Lab::new().expect("test network");
        let count = N.to_string();
        let guest = Guest::start(&lab, &["--workload", "net-rx", "--nic-mode", mode, "--count", &count, "--seconds", "5"]);
        let sock = Lab::udp_socket(&lab.host_a, "0.0.0.0:0").expect("socket in HostA");
        let sent = peer::send_stream(&sock, guest_addr(STREAM_PORT), N, SIZE, Some(150.0)).expect("send");
        assert_eq!((sent.datagrams, sent.bytes), (N, N * SIZE as u64));
        let s = guest.finish();
        let g = s.guest.expect("guest report");
        println!("{mode}: {g:?}");
        assert_eq!(g.status.as_deref(), Some("ok"), "{g:?}");
        assert_eq!(g.nic_mode.as_deref(), Some(mode));
        assert_eq!((g.datagrams, g.bytes, g.bad_seq, g.bad_checksum, g.timed_out), (Some(N), Some(sent.bytes), Some(0), Some(0), Some(false)), "{g:?}");
        assert_eq!(g.rx_queue_drops, Some(0), "{g:?}");
        let nic = s.nic.expect("NIC counters");
        assert_eq!((nic.rx_dropped_ring_full, nic.dma_errors), (0, 0), "{nic:?}");
        // Before the stream: the gateway's ARP reply (asked for at start, maybe more than
        // once); then only the stream (HostB knows the guest's MAC: no ARP).
        assert!((N + 1..=N + 3).contains(&nic.rx_frames), "{nic:?}");
        assert_eq!(Some(nic.rx_frames), g.rx_frames, "the driver took every frame the NIC got");
    }
}

#[test]
fn net_tx_delivers_a_stream_to_a_socket_in_host_a() {
    const N: u64 = 300;
    const SIZE: u64 = 512;
    let lab = Lab::new().expect("test network");
    let sock = Lab::udp_socket(&lab.host_a, &format!("{}:{STREAM_PORT}", std::net::Ipv4Addr::from(HOST_A_IP)))
        .expect("socket in HostA");
    let (count, size) = (N.to_string(), SIZE.to_string());
    let guest = Guest::start(&lab, &["--workload", "net-tx", "--count", &count, "--size", &size]);
    let got = peer::receive_stream(&sock, N, Duration::from_secs(10)).expect("receive");
    let s = guest.finish();
    let g = s.guest.expect("guest report");
    println!("host: {got:?}\nguest: {g:?}");
    assert_eq!((got.check.datagrams, got.check.bytes, got.check.bad_seq, got.check.bad_checksum, got.timed_out), (N, N * SIZE, 0, 0, false));
    assert_eq!((g.status.as_deref(), g.datagrams, g.bytes), (Some("ok"), Some(N), Some(N * SIZE)), "{g:?}");
}

#[test]
fn udp_echo_answers_every_request() {
    let lab = Lab::new().expect("test network");
    let guest = Guest::start(&lab, &["--workload", "net-echo", "--seconds", "4"]);
    let sock = Lab::udp_socket(&lab.host_a, "0.0.0.0:0").expect("socket in HostA");
    let rr = peer::request_response(&sock, guest_addr(ECHO_PORT), 64, Duration::from_secs(2), 200, Duration::from_secs(1)).expect("rr");
    println!("{rr:?}: {:.0} transactions/s", rr.per_second());
    assert!(rr.transactions > 0 && rr.timeouts == 0 && rr.bad_replies == 0, "{rr:?}");
    let g = guest.finish().guest.expect("guest report");
    assert_eq!(g.datagrams, Some(rr.transactions), "{g:?}");
}

/// `net-hostile` misprograms the NIC from inside the guest (a transmit descriptor and the
/// receive ring outside RAM, an oversized frame, a ring left full while HostB's ARP replies
/// pour in), then resets it and gets an ARP reply through: tinyvmm keeps running, exits 0,
/// and its counters say what happened.
#[test]
fn a_hostile_guest_driver_is_counted_and_the_nic_recovers() {
    let lab = Lab::new().expect("test network");
    let guest = Guest::start_unready(&lab, &["--workload", "net-hostile"]);
    let s = guest.finish();
    let g = s.guest.expect("guest report");
    let nic = s.nic.expect("NIC counters");
    println!("guest: isr {:#x} recovered {:?}\nnic: {nic:?}", g.hostile_isr.unwrap_or(0), g.hostile_recovered);
    assert_eq!((g.status.as_deref(), g.hostile_recovered), (Some("ok"), Some(true)), "{g:?}");
    let isr = g.hostile_isr.unwrap();
    assert_eq!(isr & 0x8018, 0x8018, "SERR, TER and RXOVW all raised: {isr:#x}");
    assert_eq!(nic.dma_errors, 2, "the descriptor and the ring outside RAM: {nic:?}");
    assert_eq!(nic.tx_errors, 1, "the 4000-byte frame: {nic:?}");
    assert!(nic.rx_dropped_ring_full > 0, "the full ring dropped replies: {nic:?}");
    assert_eq!(s.outcome, vmm::abi::stats::RunOutcome::GuestExit);
}

/// TCP (smoltcp's) into the guest: a 64 KiB stream from HostA arrives whole and in order.
#[test]
fn net_tcp_rx_reads_a_stream_from_host_a_intact() {
    const BYTES: u64 = 64 * 1024;
    let lab = Lab::new().expect("test network");
    let guest = Guest::start(&lab, &["--workload", "net-tcp-rx", "--nic-mode", "napi"]);
    let sent = Lab::run_in(&lab.host_a, || peer::tcp_send(guest_addr(vmm::abi::net::TCP_STREAM_PORT), BYTES, Duration::from_secs(20)))
        .unwrap()
        .expect("TCP send");
    let g = guest.finish().guest.expect("guest report");
    println!("{sent:?}: {:.0} KiB/s\n{g:?}", BYTES as f64 / 1024.0 / sent.elapsed.as_secs_f64());
    assert_eq!((g.status.as_deref(), g.bytes, g.bad_checksum, g.timed_out), (Some("ok"), Some(BYTES), Some(0), Some(false)), "{g:?}");
}
