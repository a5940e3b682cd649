//! The TAP backend against the real kernel, inside a network namespace made and removed by
//! the test (addresses from 198.18.0.0/15 only; nothing leaves the namespace). Needs root
//! and /dev/net/tun; fails, never skips, without them.
//!
//! The kernel side pings 198.18.99.2 over the TAP: its ARP request must come out of our
//! file descriptor, our ARP reply must land in its neighbour table, and its ICMP echo
//! request must follow.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmm::devices::rtl8139::NetBackend;
use vmm::net::tap::Tap;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("ip (iproute2) runs");
    assert!(o.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Removes the namespace (and the TAP in it) however the test ends.
struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn arp_reply(req: &[u8]) -> Vec<u8> {
    let (asker_mac, asker_ip, wanted_ip) = (&req[22..28], &req[28..32], &req[38..42]);
    let mut f = Vec::new();
    f.extend_from_slice(asker_mac);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(wanted_ip);
    f.extend_from_slice(asker_mac);
    f.extend_from_slice(asker_ip);
    f
}

#[test]
fn frames_cross_a_real_tap_both_ways() {
    let id = std::process::id() % 100_000;
    let (ns, dev) = (Netns(format!("kvmprof-tap-{id}")), format!("kvmpt{id}"));
    ip(&["netns", "add", &ns.0]);
    let mut tap = Tap::open(&dev).expect("create the TAP device");
    ip(&["link", "set", &dev, "netns", &ns.0]);
    ip(&["-n", &ns.0, "addr", "add", "198.18.99.1/24", "dev", &dev]);
    ip(&["-n", &ns.0, "link", "set", &dev, "up"]);
    let mut ping = Command::new("ip")
        .args(["netns", "exec", &ns.0, "ping", "-c", "3", "-i", "0.2", "-W", "1", "198.18.99.2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ping");
    let (mut arp_requests, mut echo_requests) = (0, 0);
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(5);
    while echo_requests == 0 && Instant::now() < deadline {
        let Some(n) = tap.recv(&mut buf).expect("read the TAP") else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let f = &buf[..n];
        match (f.get(12..14), f.get(38..42)) {
            (Some([0x08, 0x06]), Some([198, 18, 99, 2])) if f[21] == 1 => {
                arp_requests += 1;
                tap.send(&arp_reply(f)).expect("write the TAP");
            }
            // IPv4, ICMP, echo request, to 198.18.99.2.
            (Some([0x08, 0x00]), _) if f[23] == 1 && f[30..34] == [198, 18, 99, 2] && f[34] == 8 => echo_requests += 1,
            _ => {}
        }
    }
    let _ = ping.kill();
    let _ = ping.wait();
    assert!(arp_requests >= 1 && echo_requests >= 1, "ARP requests {arp_requests}, echo requests {echo_requests}");
    let neigh = Command::new("ip").args(["-n", &ns.0, "neigh", "show", "198.18.99.2"]).output().unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    assert!(neigh.contains("52:54:00:ab:cd:ef"), "the kernel learned our MAC from the reply: {neigh}");
}

#[test]
fn bad_tap_names_are_refused_in_one_line() {
    for name in ["", "a-name-longer-than-15"] {
        let e = Tap::open(name).err().expect("refused");
        assert!(e.to_string().contains("TAP name"), "{e}");
    }
}

/// tinyvmm with `--net tap:NAME` polls the TAP from its loop: frames the kernel sends while
/// the guest has not enabled receiving are dropped and counted, and the run is unharmed.
#[test]
fn tinyvmm_polls_its_tap_and_counts_what_the_guest_did_not_take() {
    let id = std::process::id() % 100_000;
    let (ns, dev) = (Netns(format!("kvmprof-vmtap-{id}")), format!("kvmpv{id}"));
    ip(&["netns", "add", &ns.0]);
    let dir = std::env::temp_dir().join(format!("kvmprof-vmtap-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let stats = dir.join("stats.json");
    let mut vm = Command::new(env!("CARGO_BIN_EXE_tinyvmm"))
        .args(["run", "--workload", "timer", "--seconds", "2", "--quiet", "--net", &format!("tap:{dev}"), "--stats-json"])
        .arg(&stats)
        .stdout(Stdio::null())
        .spawn()
        .expect("tinyvmm");
    // The TAP appears once tinyvmm has set up its devices.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(&format!("/sys/class/net/{dev}")).exists() {
        assert!(Instant::now() < deadline, "tinyvmm did not create {dev}");
        std::thread::sleep(Duration::from_millis(10));
    }
    ip(&["link", "set", &dev, "netns", &ns.0]);
    ip(&["-n", &ns.0, "addr", "add", "198.18.98.1/24", "dev", &dev]);
    ip(&["-n", &ns.0, "link", "set", &dev, "up"]);
    let _ = Command::new("ip")
        .args(["netns", "exec", &ns.0, "ping", "-c", "2", "-i", "0.2", "-W", "1", "198.18.98.2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let status = vm.wait().unwrap();
    assert!(status.success(), "tinyvmm: {status}");
    let s: vmm::abi::stats::RunStats = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let nic = s.nic.expect("NIC counters with --net");
    assert!(nic.rx_dropped_disabled >= 1, "the kernel's ARP requests reached the NIC: {nic:?}");
    assert_eq!((nic.rx_frames, nic.tx_frames, nic.dma_errors, nic.tx_errors), (0, 0, 0, 0), "{nic:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
