//! `net-hostile`: the NIC misprogrammed on purpose, with interrupts off and no stack, then
//! checked to still work. Each step waits (by polling ISR, at most about a second of the
//! PM timer) for the status the device should raise; tinyvmm counts each in its NIC stats.
//!
//! 0. ARP requests to the gateway until one is answered (the link is up).
//! 1. A transmit descriptor outside guest RAM: `dma_errors`, ISR SERR | TER.
//! 2. A 4000-byte frame: `tx_errors`, ISR TER.
//! 3. The receive ring outside guest RAM, and an ARP request to the gateway: its reply is
//!    not written (`dma_errors`), ISR SERR.
//! 4. An 8 KiB ring never emptied, and 200 ARP requests: the replies overflow it
//!    (`rx_dropped_ring_full`), ISR RXOVW.
//! 5. A reset and a normal bring-up: one ARP request out, its reply in.

use super::rtl8139::*;
use crate::abi::net::{NetResult, NicMode, StreamCheck};
use crate::abi::{BootParams, PORT_NIC};
use crate::timer::{pm_read, PM_HZ, PM_MASK};

fn r(off: u16) -> u16 {
    PORT_NIC + off
}

/// Polls ISR until one of `bits` is set or about `ms` milliseconds pass; the ISR value.
fn wait_isr(bits: u16, ms: u64) -> u16 {
    let start = pm_read();
    loop {
        let isr = ioread16(r(reg::ISR));
        if isr & bits != 0 || (pm_read().wrapping_sub(start) & PM_MASK) as u64 > PM_HZ * ms / 1000 {
            return isr;
        }
    }
}

/// Writes an ARP request from (`mac`, `ip`) for `target` into `f` (42 bytes).
pub fn arp_request(f: &mut [u8], mac: [u8; 6], ip: [u8; 4], target: [u8; 4]) {
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip);
    f[32..38].fill(0);
    f[38..42].copy_from_slice(&target);
}

/// An ARP request from (`mac`, `ip`) for `target`, through the next descriptor.
fn send_arp_request(mac: [u8; 6], ip: [u8; 4], target: [u8; 4]) {
    rtl8139_start_xmit(42, |f| arp_request(f, mac, ip, target));
}

#[inline(never)]
pub fn net_hostile(p: &BootParams) -> NetResult {
    let mac = rtl8139_init(NicMode::Irq);
    iowrite16(0, r(reg::IMR)); // polled: no interrupts
    let mut seen = 0u16;
    let outside = p.ram_size as u32 + 0x1000;

    // 0. Wait until the link carries frames (HostB drops what it sends for up to a second
    // after tinyvmm attached the TAP): an ARP request every half second until a reply.
    for _ in 0..20 {
        send_arp_request(mac, p.net_guest_ip, p.net_gateway);
        if wait_isr(isr::ROK, 500) & isr::ROK != 0 {
            break;
        }
    }
    while ioread8(r(reg::CR)) & cr::BUFE == 0 && rtl8139_rx_one() {
        RX_QUEUE.pop(|_| ());
    }
    iowrite16(0xffff, r(reg::ISR));

    // 1. Transmit from outside RAM.
    iowrite32(outside, r(reg::TSAD0));
    iowrite32(100, r(reg::TSD0));
    seen |= wait_isr(isr::SERR, 100);
    iowrite16(0xffff, r(reg::ISR));
    // 2. An oversized frame (the descriptor's own buffer, a size no Ethernet frame has).
    iowrite32(4000, r(reg::TSD0 + 4));
    seen |= wait_isr(isr::TER, 100);
    iowrite16(0xffff, r(reg::ISR));

    iowrite32(tx_buf_addr(0), r(reg::TSAD0));

    // 3. The ring outside RAM: the gateway's ARP reply has nowhere to go.
    iowrite32(outside, r(reg::RBSTART));
    send_arp_request(mac, p.net_guest_ip, p.net_gateway);
    seen |= wait_isr(isr::SERR, 1000);
    iowrite16(0xffff, r(reg::ISR));

    // 4. An 8 KiB ring the driver never empties, and more replies than fit.
    iowrite32(ring_addr(), r(reg::RBSTART));
    iowrite32(RCR_VALUE & !(3 << 11), r(reg::RCR));
    for _ in 0..200 {
        send_arp_request(mac, p.net_guest_ip, p.net_gateway);
    }
    seen |= wait_isr(isr::RXOVW, 1000);

    // 5. Reset, bring it up properly, and see a reply come in.
    rtl8139_init(NicMode::Irq);
    iowrite16(0, r(reg::IMR));
    send_arp_request(mac, p.net_guest_ip, p.net_gateway);
    let recovered = wait_isr(isr::ROK, 1000) & isr::ROK != 0 && rtl8139_poll_one_arp_reply(p.net_gateway);

    NetResult {
        workload: "net-hostile",
        ok: recovered,
        nic_mode: NicMode::Irq,
        guest_ip: p.net_guest_ip,
        requested: 0,
        size: 0,
        stream: StreamCheck::default(),
        timed_out: false,
        echo_requests: 0,
        rx_frames: RX_FRAMES.load(core::sync::atomic::Ordering::Relaxed),
        rx_queue_drops: RX_QUEUE_DROPS.load(core::sync::atomic::Ordering::Relaxed),
        tx_frames: TX_FRAMES.load(core::sync::atomic::Ordering::Relaxed),
        rx_interrupts: 0,
        napi_polls: 0,
        pm_ticks: 0,
        hostile_isr: seen,
        hostile_recovered: recovered,
    }
}

/// Takes the packet at the head of the ring: is it an ARP reply from `from`?
fn rtl8139_poll_one_arp_reply(from: [u8; 4]) -> bool {
    if !rtl8139_rx_one() {
        return false;
    }
    RX_QUEUE
        .pop(|f| f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[28..32] == from)
        .unwrap_or(false)
}
