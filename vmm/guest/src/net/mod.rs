//! The network workloads: the RTL8139 driver ([`rtl8139`]) under smoltcp's IPv4, ARP, ICMP
//! echo and UDP, in a main loop that halts until the NIC (or a slow 18.2 Hz timer tick, for
//! timeouts) interrupts it. Results are printed as `tinyvmm_abi::net::NetResult`.

mod hostile;
pub mod rtl8139;

use core::sync::atomic::Ordering;

use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::udp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address};

use crate::abi::net::{self as proto, NetResult, NicMode, StreamCheck};
use crate::abi::*;
use crate::kprint;
use crate::timer::{self, pm_read, PM_MASK, TICKS};
use rtl8139::{NAPI_SCHEDULED, RX_QUEUE};

/// The PIT's slowest rate (reload 0 = 65536): 1193182 / 65536 = 18.2 Hz, the timer the
/// network workloads keep for their timeouts (and smoltcp's clock) at few exits.
const SLOW_TICK_HZ_X10: u64 = 182;

/// smoltcp's clock: timer ticks, in ms.
fn now() -> Instant {
    Instant::from_millis((TICKS.load(Ordering::Relaxed) * 10_000 / SLOW_TICK_HZ_X10) as i64)
}

/// A PM-timer clock that survives the counter's 4.7 s wrap as long as it is read more
/// often than that (the main loop reads it on every timer tick).
struct PmClock {
    last: u32,
    total: u64,
}

impl PmClock {
    fn new() -> Self {
        PmClock { last: pm_read(), total: 0 }
    }
    fn read(&mut self) -> u64 {
        let now = pm_read();
        self.total += (now.wrapping_sub(self.last) & PM_MASK) as u64;
        self.last = now;
        self.total
    }
}

/// The NIC as smoltcp sees it; also counts the ICMP echo requests it hands up.
struct Nic {
    ip: [u8; 4],
    echo_requests: u64,
    /// Frames smoltcp may still take in this turn: fewer than the UDP socket holds, so one
    /// `poll` never overflows the socket before the workload drains it (Linux's netdev
    /// budget plays the same part).
    rx_budget: u32,
}

/// Frames per turn of the main loop (below the UDP socket's [`UDP_META`] packets).
const RX_PER_TURN: u32 = 32;

struct Rx<'a>(&'a mut Nic);
struct Tx;

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let nic = self.0;
        RX_QUEUE
            .pop(|frame| {
                // IPv4, ICMP, echo request, to us (smoltcp answers it itself).
                if frame.len() >= 35 && frame[12..14] == [8, 0] && frame[23] == 1 && frame[30..34] == nic.ip && frame[34] == 8 {
                    nic.echo_requests += 1;
                }
                f(frame)
            })
            .expect("receive() checked the queue is not empty")
    }
}

impl TxToken for Tx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        rtl8139::rtl8139_start_xmit(len, f)
    }
}

impl Device for Nic {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx;

    fn receive(&mut self, _t: Instant) -> Option<(Rx<'_>, Tx)> {
        if RX_QUEUE.is_empty() || self.rx_budget == 0 {
            return None;
        }
        self.rx_budget -= 1;
        Some((Rx(self), Tx))
    }

    fn transmit(&mut self, _t: Instant) -> Option<Tx> {
        Some(Tx)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

const UDP_META: usize = 64;
const UDP_BYTES: usize = 64 * 1024;
static mut UDP_RX_META: [udp::PacketMetadata; UDP_META] = [udp::PacketMetadata::EMPTY; UDP_META];
static mut UDP_RX_BUF: [u8; UDP_BYTES] = [0; UDP_BYTES];
static mut UDP_TX_META: [udp::PacketMetadata; UDP_META] = [udp::PacketMetadata::EMPTY; UDP_META];
static mut UDP_TX_BUF: [u8; UDP_BYTES] = [0; UDP_BYTES];
static mut SOCKETS: [SocketStorage<'static>; 3] = [SocketStorage::EMPTY; 3];

/// Everything a workload drives: the interface, its one UDP socket, the device.
struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    udp: smoltcp::iface::SocketHandle,
    nic: Nic,
    mode: NicMode,
    pm: PmClock,
    last_tick: u64,
    mac: [u8; 6],
    gateway: [u8; 4],
}

impl Stack {
    /// Brings the NIC and the stack up. Called once, with interrupts off.
    fn new(p: &BootParams, mode: NicMode) -> Stack {
        let mac = rtl8139::rtl8139_init(mode);
        let mut nic = Nic { ip: p.net_guest_ip, echo_requests: 0, rx_budget: RX_PER_TURN };
        let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        cfg.random_seed = u64::from(pm_read());
        let mut iface = Interface::new(cfg, &mut nic, now());
        let ip = p.net_guest_ip;
        let gw = p.net_gateway;
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::v4(ip[0], ip[1], ip[2], ip[3]), p.net_prefix));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(Ipv4Address::new(gw[0], gw[1], gw[2], gw[3]));
        let (rx_meta, rx_buf) = (&raw mut UDP_RX_META, &raw mut UDP_RX_BUF);
        let (tx_meta, tx_buf, storage) = (&raw mut UDP_TX_META, &raw mut UDP_TX_BUF, &raw mut SOCKETS);
        // SAFETY: these statics are borrowed here once, for the rest of the run (a workload
        // runs once and never returns to build another Stack); no other code names them.
        let (rx_meta, rx_buf, tx_meta, tx_buf, storage) = unsafe { (&mut *rx_meta, &mut *rx_buf, &mut *tx_meta, &mut *tx_buf, &mut *storage) };
        let rx = udp::PacketBuffer::new(&mut rx_meta[..], &mut rx_buf[..]);
        let tx = udp::PacketBuffer::new(&mut tx_meta[..], &mut tx_buf[..]);
        let (socket, sockets) = (udp::Socket::new(rx, tx), SocketSet::new(&mut storage[..]));
        let mut sockets = sockets;
        let udp = sockets.add(socket);
        Stack { iface, sockets, udp, nic, mode, pm: PmClock::new(), last_tick: 0, mac, gateway: gw }
    }

    fn socket(&mut self) -> &mut udp::Socket<'static> {
        self.sockets.get_mut::<udp::Socket>(self.udp)
    }

    /// Enables the NIC's line (IRQ 5) and the slow timer (IRQ 0), and interrupts.
    fn start(&mut self) {
        // PIT channel 0 at its slowest (reload 0 = 65536): 18.2 Hz.
        crate::io::outb(0x43, 0x34);
        crate::io::outb(0x40, 0);
        crate::io::outb(0x40, 0);
        timer::pic_set_mask(!(1u8 | 1 << NIC_IRQ));
        self.pm = PmClock::new();
        // SAFETY: the IDT has the gates of IRQ 0 and the NIC (idt_init, rtl8139_init); both
        // handlers save what they use and touch only atomics and the driver's own state.
        unsafe { core::arch::asm!("sti", options(nostack)) };
        self.resolve_gateway();
        kprint!("{}\n", proto::NET_READY_LINE);
    }

    /// Asks the gateway for its MAC and lets smoltcp take the reply, so that the first
    /// packet from another network (HostA's first ping) can be answered at once instead of
    /// being dropped while smoltcp resolves the gateway. The request is repeated every half
    /// second (up to 10 s): right after tinyvmm attaches the TAP, HostB's kernel drops what
    /// it sends until its link watcher has seen the carrier come up (up to a second).
    fn resolve_gateway(&mut self) {
        let (mac, ip, gw) = (self.mac, self.nic.ip, self.gateway);
        for _ in 0..20 {
            rtl8139::rtl8139_start_xmit(42, |f| hostile::arp_request(f, mac, ip, gw));
            let end = TICKS.load(Ordering::Relaxed) + ticks_for(1) / 2;
            while TICKS.load(Ordering::Relaxed) < end {
                self.turn();
                if rtl8139::RX_FRAMES.load(Ordering::Relaxed) > 0 && RX_QUEUE.is_empty() {
                    return;
                }
            }
        }
    }

    /// One turn of the main loop: run the NAPI poll if it is scheduled, halt if nothing is
    /// waiting, then let smoltcp process what came in and send what is queued.
    fn turn(&mut self) {
        // SAFETY: cli/sti around the check, and `sti; hlt` as one pair (the interrupt
        // shadow of sti covers hlt), so an interrupt that makes work cannot slip in between
        // the check and the halt; handlers only touch atomics and the driver's state.
        unsafe { core::arch::asm!("cli", options(nostack)) };
        let napi = self.mode == NicMode::Napi && NAPI_SCHEDULED.load(Ordering::Acquire);
        let idle = !napi && RX_QUEUE.is_empty() && self.socket().send_queue() == 0;
        if idle {
            // SAFETY: see above.
            unsafe { core::arch::asm!("sti", "hlt", options(nostack)) };
        } else {
            // SAFETY: see above.
            unsafe { core::arch::asm!("sti", options(nostack)) };
        }
        if self.mode == NicMode::Napi && NAPI_SCHEDULED.load(Ordering::Acquire) {
            rtl8139::rtl8139_poll();
        }
        let tick = TICKS.load(Ordering::Relaxed);
        if tick != self.last_tick {
            self.last_tick = tick;
            self.pm.read();
        }
        self.nic.rx_budget = RX_PER_TURN;
        self.iface.poll(now(), &mut self.nic, &mut self.sockets);
    }

    fn result(&self, workload: &'static str, p: &BootParams) -> NetResult {
        NetResult {
            workload,
            ok: true,
            nic_mode: self.mode,
            guest_ip: p.net_guest_ip,
            requested: p.count,
            size: 0,
            stream: StreamCheck::default(),
            timed_out: false,
            echo_requests: self.nic.echo_requests,
            rx_frames: rtl8139::RX_FRAMES.load(Ordering::Relaxed),
            rx_queue_drops: rtl8139::RX_QUEUE_DROPS.load(Ordering::Relaxed),
            tx_frames: rtl8139::TX_FRAMES.load(Ordering::Relaxed),
            rx_interrupts: rtl8139::RX_INTERRUPTS.load(Ordering::Relaxed),
            napi_polls: rtl8139::NAPI_POLLS.load(Ordering::Relaxed),
            pm_ticks: 0,
            hostile_isr: 0,
            hostile_recovered: false,
        }
    }
}

fn ticks_for(seconds: u64) -> u64 {
    seconds.saturating_mul(SLOW_TICK_HZ_X10) / 10
}

/// When a receiving workload's data came: the PM-timer readings of the first and the last
/// (its throughput window), and the slow tick of the last, to give up after `seconds`
/// without any.
struct RxProgress {
    idle: u64,
    last_seen: u64,
    first_pm: Option<u64>,
    last_pm: u64,
}

impl RxProgress {
    fn new(seconds: u64) -> Self {
        RxProgress { idle: ticks_for(seconds).max(1), last_seen: TICKS.load(Ordering::Relaxed), first_pm: None, last_pm: 0 }
    }

    /// After a turn of the main loop that read data (`got`) or none: notes when the data
    /// came, or says (true) that nothing came for too long. Inlined: its PM-timer read (an
    /// exit) stays in the workload's own function, where recordings have always found it.
    #[inline(always)]
    fn gave_up(&mut self, got: bool, pm: &mut PmClock) -> bool {
        if got {
            let t = pm.read();
            self.first_pm.get_or_insert(t);
            self.last_pm = t;
            self.last_seen = TICKS.load(Ordering::Relaxed);
            false
        } else {
            TICKS.load(Ordering::Relaxed).wrapping_sub(self.last_seen) > self.idle
        }
    }

    /// PM-timer ticks from the first data to the last.
    fn pm_ticks(&self) -> u64 {
        self.last_pm - self.first_pm.unwrap_or(self.last_pm)
    }
}

/// Answers ping (smoltcp) and UDP echo on port 7 for `seconds`.
#[inline(never)]
fn net_echo(p: &BootParams, mode: NicMode) -> NetResult {
    let mut s = Stack::new(p, mode);
    let _ = s.socket().bind(proto::ECHO_PORT);
    s.start();
    let end = ticks_for(p.seconds);
    let mut echoed = StreamCheck::default();
    let mut buf = [0u8; proto::DATAGRAM_MAX];
    while TICKS.load(Ordering::Relaxed) < end {
        s.turn();
        while let Ok((n, meta)) = s.socket().recv_slice(&mut buf) {
            if s.socket().send_slice(&buf[..n], meta.endpoint).is_ok() {
                echoed.datagrams += 1;
                echoed.bytes += n as u64;
            }
        }
    }
    let mut r = s.result("net-echo", p);
    r.requested = 0;
    r.stream = echoed;
    r.pm_ticks = s.pm.read();
    r
}

/// Receives `count` stream datagrams on the stream port, checking each; stops after
/// `seconds` without one.
#[inline(never)]
fn net_rx(p: &BootParams, mode: NicMode) -> NetResult {
    let mut s = Stack::new(p, mode);
    let _ = s.socket().bind(p.net_port);
    s.start();
    let mut check = StreamCheck::default();
    let mut progress = RxProgress::new(p.seconds);
    let mut timed_out = false;
    while check.datagrams < p.count {
        s.turn();
        let mut got = false;
        while let Ok((data, _)) = s.socket().recv() {
            check.add(data);
            got = true;
        }
        if progress.gave_up(got, &mut s.pm) {
            timed_out = true;
            break;
        }
    }
    let mut r = s.result("net-rx", p);
    r.stream = check;
    r.timed_out = timed_out;
    r.ok = !timed_out && check.bad_seq == 0 && check.bad_checksum == 0;
    r.pm_ticks = progress.pm_ticks();
    r
}

/// Sends `count` datagrams of `net_size` bytes to the peer, then waits until the socket
/// has handed every one to the NIC.
#[inline(never)]
fn net_tx(p: &BootParams, mode: NicMode) -> NetResult {
    let mut s = Stack::new(p, mode);
    let _ = s.socket().bind(p.net_port);
    s.start();
    let size = (p.net_size as usize).clamp(proto::DATAGRAM_HEADER, proto::DATAGRAM_MAX);
    let peer = p.net_peer_ip;
    let to = IpEndpoint::new(IpAddress::v4(peer[0], peer[1], peer[2], peer[3]), p.net_port);
    let mut buf = [0u8; proto::DATAGRAM_MAX];
    let mut sent = StreamCheck::default();
    let start = s.pm.read();
    let mut seq = 0u32;
    // At most 10 s (of the slow timer) per datagram without progress, then give up.
    let mut stuck_since = TICKS.load(Ordering::Relaxed);
    let mut ok = true;
    while u64::from(seq) < p.count || s.socket().send_queue() > 0 {
        if u64::from(seq) < p.count && s.socket().can_send() {
            proto::fill_datagram(&mut buf[..size], seq);
            if s.socket().send_slice(&buf[..size], to).is_ok() {
                sent.datagrams += 1;
                sent.bytes += size as u64;
                seq += 1;
                stuck_since = TICKS.load(Ordering::Relaxed);
                continue;
            }
        }
        let before = s.socket().send_queue();
        s.turn();
        if s.socket().send_queue() < before {
            stuck_since = TICKS.load(Ordering::Relaxed);
        } else if TICKS.load(Ordering::Relaxed).wrapping_sub(stuck_since) > ticks_for(10) {
            ok = false;
            break;
        }
    }
    let mut r = s.result("net-tx", p);
    r.size = size as u64;
    r.stream = sent;
    r.ok = ok;
    r.pm_ticks = s.pm.read() - start;
    r
}

const TCP_RX_BYTES: usize = 64 * 1024;
static mut TCP_RX_BUF: [u8; TCP_RX_BYTES] = [0; TCP_RX_BYTES];
static mut TCP_TX_BUF: [u8; 2048] = [0; 2048];

/// Accepts one TCP connection on the TCP stream port and reads it until the sender closes
/// it, checking every byte; gives up after `seconds` without data.
#[inline(never)]
fn net_tcp_rx(p: &BootParams, mode: NicMode) -> NetResult {
    let mut s = Stack::new(p, mode);
    let (rx, tx) = (&raw mut TCP_RX_BUF, &raw mut TCP_TX_BUF);
    // SAFETY: borrowed once here for the rest of the run; no other code names them.
    let (rx, tx) = unsafe { (&mut *rx, &mut *tx) };
    let tcp = smoltcp::socket::tcp::Socket::new(smoltcp::socket::tcp::SocketBuffer::new(&mut rx[..]), smoltcp::socket::tcp::SocketBuffer::new(&mut tx[..]));
    let h = s.sockets.add(tcp);
    {
        let sock = s.sockets.get_mut::<smoltcp::socket::tcp::Socket>(h);
        // Our clock ticks at 18.2 Hz: a delayed ACK would wait for a tick. ACK at once.
        sock.set_ack_delay(None);
        let _ = sock.listen(proto::TCP_STREAM_PORT);
    }
    s.start();
    let mut check = StreamCheck::default();
    let mut progress = RxProgress::new(p.seconds);
    let mut connected = false;
    let mut timed_out = false;
    let mut buf = [0u8; 2048];
    loop {
        s.turn();
        let sock = s.sockets.get_mut::<smoltcp::socket::tcp::Socket>(h);
        let mut got = false;
        while let Ok(n) = sock.recv_slice(&mut buf) {
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                if *b != proto::tcp_stream_byte(check.bytes + k as u64) {
                    check.bad_checksum += 1;
                }
            }
            check.bytes += n as u64;
            got = true;
        }
        connected |= sock.state() == smoltcp::socket::tcp::State::Established;
        if connected && !sock.may_recv() {
            // The sender's FIN came and everything before it was read.
            sock.close();
            break;
        }
        if got {
            // Announce the window the reads opened now, not after the next halt.
            s.iface.poll(now(), &mut s.nic, &mut s.sockets);
        }
        if progress.gave_up(got, &mut s.pm) {
            timed_out = true;
            break;
        }
    }
    // Let the FIN and the last ACKs go out.
    let end = TICKS.load(Ordering::Relaxed) + 4;
    while TICKS.load(Ordering::Relaxed) < end && s.sockets.get_mut::<smoltcp::socket::tcp::Socket>(h).is_open() {
        s.turn();
    }
    let mut r = s.result("net-tcp-rx", p);
    r.requested = 0;
    r.stream = check;
    r.timed_out = timed_out;
    r.ok = !timed_out && check.bad_checksum == 0 && check.bytes > 0;
    r.pm_ticks = progress.pm_ticks();
    r
}

pub fn run(p: &BootParams) -> u8 {
    let Some(mode) = NicMode::from_abi(p.net_mode) else {
        kprint!("@@result {{\"status\":\"error\",\"error\":\"unknown nic mode {}\"}}\n", p.net_mode);
        return 2;
    };
    let r = match p.workload {
        WL_NET_ECHO => net_echo(p, mode),
        WL_NET_RX => net_rx(p, mode),
        WL_NET_TX => net_tx(p, mode),
        WL_NET_HOSTILE => hostile::net_hostile(p),
        WL_NET_TCP_RX => net_tcp_rx(p, mode),
        _ => return 2,
    };
    // SAFETY: interrupts off for the report and the exit.
    unsafe { core::arch::asm!("cli", options(nostack)) };
    kprint!("@@result {}\n", r);
    u8::from(!r.ok)
}
