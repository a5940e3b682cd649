//! The paper's test network, made of Linux network namespaces and removed on `Drop`:
//!
//! ```text
//!  HostA 198.18.0.1/24 ==veth== 198.18.0.2/24 HostB 198.18.1.1/24 ==TAP== guest 198.18.1.2/24
//! ```
//!
//! - **HostA** (namespace [`Lab::host_a`]): one end of a veth pair; routes 198.18.1.0/24
//!   through HostB.
//! - **HostB** (namespace [`Lab::host_b`]): the other veth end, and the guest's TAP
//!   ([`Lab::tap`], made persistent here, so tinyvmm attaches to it); forwards IPv4 between
//!   them. The guest's MAC is entered as a permanent neighbour, so traffic to the guest
//!   needs no ARP: a test sending K datagrams gives the guest exactly K frames.
//! - **the guest**: tinyvmm run inside HostB ([`Lab::tinyvmm`]), `--net tap:<tap>`.
//!
//! Names are unique per process and lab (parallel tests do not collide); interface names
//! fit in 15 bytes. IPv6 is off in both namespaces, so no router solicitation or MLD frame
//! reaches the guest. Addresses are from the benchmark range 198.18.0.0/15 only (RFC 2544)
//! and nothing leaves the namespaces.
//!
//! Network namespaces are per thread: [`Lab::run_in`] runs a closure in a thread that has
//! entered a namespace, so a socket made there lives in HostA (or HostB) and can then be
//! used from any thread: host-side peers ([`super::peer`]) need no subprocess.
//!
//! Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2's `ip`.

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::abi::net::{GATEWAY_IP, GUEST_IP, HOST_A_IP, HOST_B_IP, PREFIX_LEN};

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/var/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot run `ip` (install iproute2): {0}")]
    NoIp(#[source] std::io::Error),
    #[error("`ip {args}` failed (are you root?): {stderr}")]
    Ip { args: String, stderr: String },
    #[error("cannot bind a UDP socket to {addr} in namespace {ns}: {source}")]
    Bind {
        addr: String,
        ns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {ns} (is it there? are you root?): {source}")]
    Enter {
        ns: String,
        #[source]
        source: std::io::Error,
    },
}

/// The two namespaces, the veth pair and the guest's TAP. Dropping it removes them all.
#[derive(Debug)]
pub struct Lab {
    /// Namespace of HostA.
    pub host_a: String,
    /// Namespace of HostB (holds the TAP; run tinyvmm here).
    pub host_b: String,
    /// HostA's veth end.
    pub veth_a: String,
    /// HostB's veth end.
    pub veth_b: String,
    /// The guest's TAP, in HostB: `tinyvmm run --net tap:<tap>`.
    pub tap: String,
}

static LABS: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS`, an error with its stderr if it fails.
pub fn ip(args: &[&str]) -> Result<(), LabError> {
    let out = Command::new("ip").args(args).output().map_err(LabError::NoIp)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Ip { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

fn dotted(a: [u8; 4]) -> String {
    Ipv4Addr::from(a).to_string()
}

impl Lab {
    /// Builds the network with the guest at 198.18.1.2 and the NIC's MAC
    /// ([`crate::vm::NIC_MAC`]).
    pub fn new() -> Result<Lab, LabError> {
        Lab::with_guest(GUEST_IP, crate::vm::NIC_MAC)
    }

    /// Builds the network for a guest at `guest_ip` (in 198.18.1.0/24) with `guest_mac`.
    pub fn with_guest(guest_ip: [u8; 4], guest_mac: [u8; 6]) -> Result<Lab, LabError> {
        let n = LABS.fetch_add(1, Ordering::Relaxed) % 100;
        let id = std::process::id() % 100_000 * 100 + n;
        let pid = std::process::id();
        let lab = Lab {
            host_a: format!("kvmprof-{pid}-{n}-hosta"),
            host_b: format!("kvmprof-{pid}-{n}-hostb"),
            veth_a: format!("kva{id}"),
            veth_b: format!("kvb{id}"),
            tap: format!("kvt{id}"),
        };
        // From here on, Drop removes whatever was made if a step fails.
        lab.build(guest_ip, guest_mac)?;
        Ok(lab)
    }

    fn build(&self, guest_ip: [u8; 4], mac: [u8; 6]) -> Result<(), LabError> {
        let (a, b) = (self.host_a.as_str(), self.host_b.as_str());
        ip(&["netns", "add", a])?;
        ip(&["netns", "add", b])?;
        for ns in [a, b] {
            sysctl(ns, &["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        sysctl(b, &["net.ipv4.ip_forward=1"])?;
        ip(&["link", "add", &self.veth_a, "netns", a, "type", "veth", "peer", "name", &self.veth_b, "netns", b])?;
        let cidr = |x: [u8; 4]| format!("{}/{PREFIX_LEN}", dotted(x));
        ip(&["-n", a, "addr", "add", &cidr(HOST_A_IP), "dev", &self.veth_a])?;
        ip(&["-n", a, "link", "set", &self.veth_a, "up"])?;
        ip(&["-n", b, "addr", "add", &cidr(HOST_B_IP), "dev", &self.veth_b])?;
        ip(&["-n", b, "link", "set", &self.veth_b, "up"])?;
        ip(&["-n", b, "tuntap", "add", "dev", &self.tap, "mode", "tap"])?;
        ip(&["-n", b, "addr", "add", &cidr(GATEWAY_IP), "dev", &self.tap])?;
        ip(&["-n", b, "link", "set", &self.tap, "up"])?;
        let guest_net = format!("{}/{PREFIX_LEN}", dotted([guest_ip[0], guest_ip[1], guest_ip[2], 0]));
        ip(&["-n", a, "route", "add", &guest_net, "via", &dotted(HOST_B_IP)])?;
        let mac = mac.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":");
        ip(&["-n", b, "neigh", "replace", &dotted(guest_ip), "lladdr", &mac, "dev", &self.tap, "nud", "permanent"])?;
        Ok(())
    }

    /// `--net tap:<tap>` for tinyvmm.
    pub fn net_arg(&self) -> String {
        format!("tap:{}", self.tap)
    }

    /// `ip netns exec NS PROGRAM`: a command run inside namespace `ns` (add its arguments).
    pub fn exec(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// `tinyvmm` (the binary at `path`) inside HostB, with `--net tap:<tap>` still to add:
    /// `lab.tinyvmm(path).args(["run", "--net", &lab.net_arg(), ...])`. `ip netns exec`
    /// execs the program, so the child's PID is tinyvmm's (for `kvmprof record --pid`).
    pub fn tinyvmm(&self, path: &Path) -> Command {
        Lab::exec(&self.host_b, path)
    }

    /// Runs `f` in a new thread that has entered network namespace `ns`, and returns what
    /// it returns. Sockets made in `f` belong to `ns` for their whole life.
    pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        let path = Path::new(NETNS_DIR).join(ns);
        let file = std::fs::File::open(&path).map_err(|source| LabError::Enter { ns: ns.into(), source })?;
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                // SAFETY: setns on an open namespace file (kept open for the call) moves only
                // this thread, which is ours and ends after `f`; no memory is involved.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(LabError::Enter { ns: ns.into(), source: std::io::Error::last_os_error() });
                }
                Ok(f())
            });
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// A UDP socket bound to `addr` inside namespace `ns` (e.g. HostA's `198.18.0.1:9000`,
    /// or `0.0.0.0:0`), usable from any thread.
    pub fn udp_socket(ns: &str, addr: &str) -> Result<UdpSocket, LabError> {
        Lab::run_in(ns, || UdpSocket::bind(addr))?.map_err(|source| LabError::Bind { addr: addr.into(), ns: ns.into(), source })
    }
}

fn sysctl(ns: &str, settings: &[&str]) -> Result<(), LabError> {
    let mut args = vec!["netns", "exec", ns, "sysctl", "-q", "-w"];
    args.extend_from_slice(settings);
    ip(&args)
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end (and so the pair) and the TAP.
        let _ = ip(&["-n", &self.host_b, "link", "del", &self.tap]);
        let _ = ip(&["netns", "del", &self.host_a]);
        let _ = ip(&["netns", "del", &self.host_b]);
    }
}
