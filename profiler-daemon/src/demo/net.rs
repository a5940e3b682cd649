//! Sections 6–8, the paper's network half, measured in a test network made for the run
//! (`vmm::net::lab`: namespaces HostA and HostB, the guest behind HostB's TAP):
//!
//! - Fig. 3: real `ping` round trips HostA–HostB, HostB–guest and HostA–guest;
//! - Fig. 4 / Fig. 9: a UDP stream to the guest (`net-rx`, sent from HostA), one from it
//!   (`net-tx`, received in HostA) and UDP request/response against its echo port, with the
//!   guest driver in `irq` and in `napi` mode, round by round (the modes interleaved);
//! - Table 2: the hot guest functions of the stream to the guest (napi, the default driver).
//!
//! Every tinyvmm run is recorded by kvmprof ([`LiveVm`]); the traffic's own exits are the
//! difference of two snapshots taken around it.
use std::net::{Ipv4Addr, SocketAddr};

use tinyvmm_abi::net::{NicMode, ECHO_PORT, GUEST_IP, HOST_A_IP, HOST_B_IP, NET_READY_LINE, STREAM_PORT};
use vmm::net::lab::Lab;
use vmm::net::peer;

use super::net_analysis::*;
use super::net_result::*;
use super::net_vm::LiveVm;
use super::*;
use crate::top::delta;

/// The network experiments' sizes (`kvmprof demo --net-*`).
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// Pings per path (Fig. 3).
    pub pings: u32,
    /// Datagrams HostA offers to the guest (`net-rx`).
    pub to_guest: u64,
    /// Datagrams the guest sends to HostA (`net-tx`).
    pub from_guest: u64,
    /// UDP payload bytes per datagram.
    pub size: u64,
    /// Datagrams per second HostA offers to the guest (`net-rx`): above what the guest can
    /// take, so its receive rate is its capacity (netperf's UDP_STREAM); the excess is
    /// dropped by the NIC (ring full) and counted.
    pub rate: f64,
    /// Seconds of UDP request/response per mode.
    pub rr_seconds: f64,
    /// Rounds: each runs every test in irq and then in napi mode; medians are reported.
    pub rounds: u32,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions { pings: 20, to_guest: 600, from_guest: 200, size: 1024, rate: 1000.0, rr_seconds: 2.0, rounds: 1 }
    }
}

impl NetOptions {
    pub fn check(&self) -> Result<()> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if self.pings == 0 || self.to_guest == 0 || self.from_guest == 0 || self.rounds == 0 || !positive(self.rr_seconds) || !positive(self.rate) {
            bail!("--net-pings, --net-to-guest, --net-from-guest, --net-rate, --net-rounds and --net-rr-seconds must be above 0");
        }
        let (lo, hi) = (tinyvmm_abi::net::DATAGRAM_HEADER as u64, tinyvmm_abi::net::DATAGRAM_MAX as u64);
        if !(lo..=hi).contains(&self.size) {
            bail!("--net-size {}: give {lo} to {hi} bytes (the stream header is {lo}; 1472 fills an Ethernet frame)", self.size);
        }
        Ok(())
    }
}

/// Progress steps of the network half.
pub(super) fn steps(o: &NetOptions) -> usize {
    2 + 6 * o.rounds as usize
}

/// What the network half needs from the host, checked before any run: one line each.
pub(super) fn check_host() -> Result<()> {
    if !Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun does not exist: the network sections need TAP devices (modprobe tun), or run `kvmprof demo --sections disk`");
    }
    for (prog, pkg) in [("ip", "iproute2"), ("ping", "iputils-ping")] {
        let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()));
        if !found {
            bail!("`{prog}` is not installed: the network sections need it (apt-get install {pkg}), or run `kvmprof demo --sections disk`");
        }
    }
    Ok(())
}

const PM_TIMER_HZ: f64 = 3_579_545.0;
/// Boot to `@@net-ready` takes well under this even under the profiler.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// `net-rx` ends on this much idle time when datagrams were dropped (its `--seconds`).
const GUEST_IDLE_S: u64 = 1;
/// HostA stops receiving `net-tx`'s stream after this much idle time.
const RX_IDLE_S: u64 = 3;
const PING_INTERVAL_S: f64 = 0.02;

fn ip(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

fn lab_err(e: vmm::net::lab::LabError) -> anyhow::Error {
    anyhow::anyhow!("the test network: {e}")
}

/// `ping -c COUNT -i INTERVAL -q ADDR` in namespace `ns`.
fn ping(ns: &str, from: &'static str, to: &'static str, addr: [u8; 4], count: u32) -> Result<RttPath> {
    let address = ip(addr).to_string();
    let out = Lab::exec(ns, "ping")
        .args(["-c", &count.to_string(), "-i", &PING_INTERVAL_S.to_string(), "-W", "2", "-q", &address])
        .output()
        .context("cannot run ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (sent, received, [min_ms, avg_ms, max_ms, mdev_ms]) =
        parse_ping(&text).with_context(|| format!("ping {from} -> {to} ({address}) printed no summary: {}", String::from_utf8_lossy(&out.stderr).trim()))?;
    Ok(RttPath { from, to, address, sent, received, min_ms, avg_ms, max_ms, mdev_ms })
}

struct Net<'a> {
    ctx: &'a Ctx,
    lab: Lab,
    opts: &'a NetOptions,
    prefix: Vec<String>,
}

impl Net<'_> {
    fn vm(&self, name: &str, mode: NicMode, workload: &[&str]) -> Result<LiveVm> {
        let mut args: Vec<String> = vec!["--net".into(), self.lab.net_arg(), "--nic-mode".into(), mode.as_str().into(), "--skip-pmtmr-calibration".into(), "--workload".into()];
        args.extend(workload.iter().map(|s| s.to_string()));
        let mut vm = LiveVm::start(self.ctx, name, &self.prefix, &args)?;
        vm.wait_console(NET_READY_LINE, READY_TIMEOUT)?;
        Ok(vm)
    }

    fn host_a_socket(&self, bind: &str) -> Result<std::net::UdpSocket> {
        Lab::udp_socket(&self.lab.host_a, bind).map_err(lab_err)
    }

    /// `net-echo`: pings from HostB and HostA (Fig. 3, when `pings`), then request/response
    /// from HostA, the exits of which are cut out with two snapshots.
    fn echo(&self, name: &str, mode: NicMode, pings: bool) -> Result<(Option<[RttPath; 2]>, RequestResponse)> {
        let o = self.opts;
        let ping_s = if pings { 2.0 * (o.pings as f64 * PING_INTERVAL_S + 1.0) } else { 0.0 };
        let seconds = (ping_s + o.rr_seconds + 1.5).ceil() as u64;
        let sock = self.host_a_socket("198.18.0.1:0")?;
        let mut vm = self.vm(name, mode, &["net-echo", "--seconds", &seconds.to_string()])?;
        let rtt = if pings {
            let (b, a) = vm.while_running(|| {
                (ping(&self.lab.host_b, "HostB", "guest", GUEST_IP, o.pings), ping(&self.lab.host_a, "HostA", "guest", GUEST_IP, o.pings))
            });
            Some([b?, a?])
        } else {
            None
        };
        let to = SocketAddr::from((ip(GUEST_IP), ECHO_PORT));
        let s0 = vm.snapshot()?;
        let rr = vm.while_running(|| peer::request_response(&sock, to, o.size as usize, Duration::from_secs_f64(o.rr_seconds), u64::MAX, Duration::from_secs(1)));
        let s1 = vm.snapshot()?;
        let rr = rr.context("UDP request/response from HostA")?;
        vm.finish(Duration::from_secs(seconds + 30))?;
        let secs = rr.elapsed.as_secs_f64();
        Ok((
            rtt,
            RequestResponse {
                transactions: rr.transactions,
                payload_bytes: o.size,
                seconds: secs,
                per_s: rr.per_second(),
                mean_us: if rr.transactions > 0 { 1e6 * secs / rr.transactions as f64 } else { 0.0 },
                exits: packet_exits(&delta::between(&s0, &s1), rr.transactions),
            },
        ))
    }

    /// `net-rx`: HostA offers the stream at `rate`; the guest counts and checks what it
    /// takes (it ends on its idle timeout when some were dropped: a timed-out report is the
    /// expected end here, not a failure).
    /// Also returns the stream's I/O exits (port accesses but the console's), for Table 2.
    fn stream_to_guest(&self, name: &str, mode: NicMode) -> Result<(Stream, Profile)> {
        let o = self.opts;
        let sock = self.host_a_socket("198.18.0.1:0")?;
        let mut vm = self.vm(name, mode, &["net-rx", "--count", &o.to_guest.to_string(), "--seconds", &GUEST_IDLE_S.to_string()])?;
        let s0 = vm.snapshot()?;
        let to = SocketAddr::from((ip(GUEST_IP), STREAM_PORT));
        let sent = vm.while_running(|| peer::send_stream(&sock, to, o.to_guest, o.size as usize, Some(o.rate))).context("sending the UDP stream from HostA")?;
        let timed_out_cleanly = |st: &RunStats| st.guest.as_ref().is_some_and(|g| g.timed_out == Some(true) && g.bad_checksum == Some(0));
        let f = vm.finish_accepting(Duration::from_secs(GUEST_IDLE_S + 60), timed_out_cleanly)?;
        let g = f.stats.guest.clone().unwrap_or_default();
        let check = g.net_stream().with_context(|| format!("the {name} guest printed no network result"))?;
        // The guest's PM-timer time from the first datagram it took to the last.
        let seconds = g.pm_ticks.unwrap_or(0) as f64 / PM_TIMER_HZ;
        let phase = delta::between(&s0, &f.rec);
        let io = phase.filtered(|e| e.access.port().is_some_and(|(_, p)| p != CONSOLE_PORT));
        let stream = Stream {
            direction: "to-guest",
            datagrams_sent: sent.datagrams,
            datagrams_received: check.datagrams,
            payload_bytes: o.size,
            bytes_sent: sent.bytes,
            bytes_received: check.bytes,
            out_of_order: check.bad_seq,
            bad_checksums: check.bad_checksum,
            seconds,
            mbit_s: rate(check.bytes as f64 * 8.0 / 1e6, seconds),
            datagrams_per_s: rate(check.datagrams as f64, seconds),
            exits: packet_exits(&phase, check.datagrams),
            nic: nic_counts(&f.rec, &f.stats),
        };
        Ok((stream, io))
    }

    /// `net-tx`: the guest sends the stream; HostA receives and checks it.
    fn stream_from_guest(&self, name: &str, mode: NicMode) -> Result<Stream> {
        let o = self.opts;
        let sock = self.host_a_socket(&format!("{}:{STREAM_PORT}", ip(HOST_A_IP)))?;
        let mut vm = self.vm(name, mode, &["net-tx", "--count", &o.from_guest.to_string(), "--size", &o.size.to_string()])?;
        let s0 = vm.snapshot()?;
        let got = vm.while_running(|| peer::receive_stream(&sock, o.from_guest, Duration::from_secs(RX_IDLE_S))).context("receiving the UDP stream in HostA")?;
        let f = vm.finish(Duration::from_secs(60))?;
        let g = f.stats.guest.clone().unwrap_or_default();
        let sent = g.net_stream().with_context(|| format!("the {name} guest printed no network result"))?;
        let seconds = got.elapsed.as_secs_f64();
        let c = got.check;
        Ok(Stream {
            direction: "from-guest",
            datagrams_sent: sent.datagrams,
            datagrams_received: c.datagrams,
            payload_bytes: o.size,
            bytes_sent: sent.bytes,
            bytes_received: c.bytes,
            out_of_order: c.bad_seq,
            bad_checksums: c.bad_checksum,
            seconds,
            mbit_s: rate(c.bytes as f64 * 8.0 / 1e6, seconds),
            datagrams_per_s: rate(c.datagrams as f64, seconds),
            exits: packet_exits(&delta::between(&s0, &f.rec), sent.datagrams),
            nic: nic_counts(&f.rec, &f.stats),
        })
    }
}

fn rate(n: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n / seconds
    } else {
        0.0
    }
}

pub(super) fn run(ctx: &Ctx, o: &NetOptions, progress: &mut Progress, resolve: &dyn Fn(u64) -> Option<String>) -> Result<NetSection> {
    progress.say("network: building the test network (namespaces HostA, HostB, the guest's TAP)");
    let lab = Lab::new().map_err(lab_err)?;
    let prefix = vec!["ip".to_string(), "netns".into(), "exec".into(), lab.host_b.clone()];
    let net = Net { ctx, lab, opts: o, prefix };
    let host_to_host = ping(&net.lab.host_a, "HostA", "HostB", HOST_B_IP, o.pings)?;

    let mut rounds = Vec::new();
    let mut rtt_guest = None;
    let mut hot_rec = None;
    for round in 1..=o.rounds {
        let mut modes = Vec::new();
        for mode in [NicMode::Irq, NicMode::Napi] {
            let m = mode.as_str();
            let tag = |t: &str| format!("net-{t}-{m}-r{round}");
            let first_napi = round == 1 && mode == NicMode::Napi;
            progress.say(&format!("network round {round}/{}: net-echo, driver {m}: {}UDP request/response", o.rounds, if first_napi { "ping (Fig. 3), " } else { "" }));
            let (rtt, rr) = net.echo(&tag("echo"), mode, first_napi)?;
            if rtt.is_some() {
                rtt_guest = rtt;
            }
            progress.say(&format!("network round {round}/{}: UDP stream to the guest (net-rx), driver {m}, {} x {} bytes at {}/s", o.rounds, o.to_guest, o.size, o.rate));
            let (to_guest, rec) = net.stream_to_guest(&tag("rx"), mode)?;
            if first_napi {
                hot_rec = Some(rec);
            }
            progress.say(&format!("network round {round}/{}: UDP stream from the guest (net-tx), driver {m}, {} x {} bytes", o.rounds, o.from_guest, o.size));
            let from_guest = net.stream_from_guest(&tag("tx"), mode)?;
            modes.push(ModeRuns { mode: m, to_guest, from_guest, rr });
        }
        let napi = modes.pop().context("two modes")?;
        let irq = modes.pop().context("two modes")?;
        rounds.push(Round { irq, napi });
    }
    drop(net);

    progress.say("network: hot functions (Table 2), medians");
    let [b_guest, a_guest] = rtt_guest.context("no ping run")?;
    let guest_share_pct = guest_share_pct(host_to_host.avg_ms, a_guest.avg_ms);
    let rtt = Rtt { mode: NicMode::Napi.as_str(), count: o.pings, interval_ms: PING_INTERVAL_S * 1e3, paths: vec![host_to_host, b_guest, a_guest], guest_share_pct };

    let irq = summarize("irq", &rounds, |r| &r.irq);
    let napi = summarize("napi", &rounds, |r| &r.napi);
    let change = no_napi_change(&irq, &napi);
    let stream = NetStream { verdict: verdict(&change, rounds.len()), irq, napi, no_napi_change_pct: change, rounds };

    let rec = hot_rec.context("no napi stream run")?;
    let rep = report::build(&rec, GroupBy::Function, resolve);
    let rows = hot_functions(&rep, 10);
    let paper_functions_found = paper::TABLE2_HOT_FUNCTIONS
        .iter()
        .filter(|f| rows.iter().any(|r| r.function.as_deref().map(short_fn) == Some(**f)))
        .map(|f| f.to_string())
        .collect();
    let hot_functions = NetHot {
        run: format!("the stream to the guest (net-rx, driver napi, {} x {} bytes offered at {}/s): its port-I/O exits, console left out", o.to_guest, o.size, o.rate),
        rows,
        total_exits: rep.total_exits,
        total_time_ns: rep.total_time_ns,
        paper_functions_found,
    };
    Ok(NetSection { setup: NetSetup::new(o), paper: NetPaper::default(), rtt, stream, hot_functions })
}

impl NetSetup {
    fn new(o: &NetOptions) -> NetSetup {
        NetSetup {
            lab: "network namespaces HostA (198.18.0.1, veth) and HostB (198.18.0.2 on the veth, 198.18.1.1 on the guest's TAP, forwarding); tinyvmm runs in HostB with --net tap:NAME, the guest at 198.18.1.2; made and removed by the demo".into(),
            rtt: format!("ping -c {} -i {PING_INTERVAL_S} from HostA to HostB, and from HostB and HostA to the guest during a net-echo run (driver napi), recorded by kvmprof", o.pings),
            stream: format!(
                "per round and mode (irq, then napi): net-echo with {} s of UDP request/response from HostA to the guest's port 7 ({} bytes, one in flight); net-rx --count {} with HostA offering {} datagrams of {} bytes at {}/s to port 9000, more than the guest takes (netperf's UDP_STREAM: throughput = bytes the guest received / its PM-timer time from the first to the last; the NIC drops the excess when its ring is full and counts it); net-tx --count {} --size {} (throughput = bytes HostA received / its time from the first to the last); medians over {} round(s)",
                o.rr_seconds, o.size, o.to_guest, o.to_guest, o.size, o.rate, o.from_guest, o.size, o.rounds
            ),
            exits: "kvmprof snapshots around the traffic (after the guest's @@net-ready until the RR ends, or until the guest exits for the streams); exits per datagram (per transaction for RR) without the console's (0x3f8); NIC exits on ports 0xc000-0xc0ff; interrupt path: ISR/IMR accesses, EOIs to the PICs, interrupt windows".into(),
            hot_functions: "kvmprof report --by function of the round-1 net-rx run with the napi driver: the port-I/O exits of the stream phase (after @@net-ready until the guest exits), the console's (0x3f8, its result line) left out".into(),
        }
    }
}
