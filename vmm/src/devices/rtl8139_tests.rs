//! The NIC against a queue backend and real guest memory: transmit and receive as a driver
//! does them, exact register effects, and a hostile guest that must not hurt the VMM.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::*;

const BASE: u16 = 0xc000;
const RAM: usize = 0x10_0000;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

#[derive(Clone, Default)]
struct Queue {
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    incoming: Arc<Mutex<VecDeque<Vec<u8>>>>,
}

impl NetBackend for Queue {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.sent.lock().unwrap().push(frame.to_vec());
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        let Some(f) = self.incoming.lock().unwrap().pop_front() else { return Ok(None) };
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(Some(f.len().max(n)))
    }
}

fn nic() -> (Rtl8139, Queue, GuestMemoryMmap) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
    let q = Queue::default();
    (Rtl8139::new(BASE, MAC, mem.clone(), Box::new(q.clone())), q, mem)
}

fn w8(n: &mut Rtl8139, off: u16, v: u8) {
    n.write(BASE + off, &[v]);
}
fn w16(n: &mut Rtl8139, off: u16, v: u16) {
    n.write(BASE + off, &v.to_le_bytes());
}
fn w32(n: &mut Rtl8139, off: u16, v: u32) {
    n.write(BASE + off, &v.to_le_bytes());
}
fn r16(n: &mut Rtl8139, off: u16) -> u16 {
    let mut b = [0u8; 2];
    n.read(BASE + off, &mut b);
    u16::from_le_bytes(b)
}
fn r32(n: &mut Rtl8139, off: u16) -> u32 {
    let mut b = [0u8; 4];
    n.read(BASE + off, &mut b);
    u32::from_le_bytes(b)
}

fn frame(dst: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x00]);
    f.extend((f.len()..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

#[test]
fn mac_reads_back_and_transmit_sends_the_descriptor() {
    let (mut n, q, mem) = nic();
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        let mut x = [0u8];
        n.read(BASE + i as u16, &mut x);
        *b = x[0];
    }
    assert_eq!(mac, MAC);
    let f = frame([0xff; 6], 60, 1);
    mem.write_slice(&f, GuestAddress(0x2000)).unwrap();
    w8(&mut n, reg::CR, cr::TE);
    w16(&mut n, reg::IMR, isr::TOK);
    w32(&mut n, reg::TSAD0 + 4, 0x2000);
    w32(&mut n, reg::TSD0 + 4, f.len() as u32);
    assert_eq!(q.sent.lock().unwrap().as_slice(), std::slice::from_ref(&f));
    assert_eq!(r32(&mut n, reg::TSD0 + 4) & (tsd::OWN | tsd::TOK), tsd::OWN | tsd::TOK);
    assert_eq!(r16(&mut n, reg::ISR), isr::TOK);
    assert!(n.irq_level());
    // Write 1 to clear.
    w16(&mut n, reg::ISR, isr::TOK);
    assert_eq!(r16(&mut n, reg::ISR), 0);
    assert!(!n.irq_level());
    assert_eq!((n.stats.tx_frames, n.stats.tx_bytes, n.stats.interrupts), (1, 60, 1));
}

#[test]
fn receive_writes_the_chip_header_into_the_ring() {
    let (mut n, q, mem) = nic();
    let ring = 0x4000u32;
    w32(&mut n, reg::RBSTART, ring);
    w32(&mut n, reg::RCR, rcr::APM | rcr::AB | rcr::WRAP);
    w8(&mut n, reg::CR, cr::RE);
    w16(&mut n, reg::IMR, isr::ROK);
    assert_eq!(r16(&mut n, reg::CR) as u8 & cr::BUFE, cr::BUFE);
    let frames = [frame(MAC, 60, 1), frame([0xff; 6], 99, 2), frame([0x33; 6], 70, 3), frame(MAC, 1514, 4)];
    q.incoming.lock().unwrap().extend(frames.iter().cloned());
    // The third is for another station (multicast not accepted): not delivered.
    assert_eq!(n.poll_rx(), 3);
    assert!(n.irq_level());
    let mut at = 0u32;
    for f in [&frames[0], &frames[1], &frames[3]] {
        let mut hdr = [0u8; 4];
        mem.read_slice(&mut hdr, GuestAddress(u64::from(ring + at))).unwrap();
        assert_eq!(u16::from_le_bytes([hdr[0], hdr[1]]), RX_STATUS_ROK);
        assert_eq!(u16::from_le_bytes([hdr[2], hdr[3]]) as usize, f.len() + 4);
        let mut data = vec![0u8; f.len()];
        mem.read_slice(&mut data, GuestAddress(u64::from(ring + at + 4))).unwrap();
        assert_eq!(&data, f);
        at = (at + 4 + f.len() as u32 + 4 + 3) & !3;
    }
    assert_eq!(u32::from(r16(&mut n, reg::CBR)), at);
    assert_eq!(r16(&mut n, reg::CR) as u8 & cr::BUFE, 0);
    // The driver consumed everything: CAPR = read offset − 16, and the ring is empty.
    w16(&mut n, reg::CAPR, (at as u16).wrapping_sub(16));
    assert_eq!(r16(&mut n, reg::CR) as u8 & cr::BUFE, cr::BUFE);
    assert_eq!((n.stats.rx_frames, n.stats.rx_bytes), (3, 60 + 99 + 1514));
}

#[test]
fn hostile_descriptors_and_frames_are_refused_and_counted() {
    let (mut n, q, _mem) = nic();
    w8(&mut n, reg::CR, cr::TE | cr::RE | 0x40); // a reserved bit: ignored, counted
    assert_eq!(n.stats.ignored_writes, 1);
    w16(&mut n, reg::IMR, 0xffff);
    // A descriptor outside guest RAM.
    w32(&mut n, reg::TSAD0, RAM as u32 - 10);
    w32(&mut n, reg::TSD0, 60);
    assert_eq!(r32(&mut n, reg::TSD0) & (tsd::OWN | tsd::TABT), tsd::OWN | tsd::TABT);
    assert_eq!(r16(&mut n, reg::ISR) & (isr::TER | isr::SERR), isr::TER | isr::SERR);
    // Empty and oversized frames.
    w32(&mut n, reg::TSAD0 + 4, 0x1000);
    w32(&mut n, reg::TSD0 + 4, 0);
    w32(&mut n, reg::TSD0 + 8, 0x1fff);
    assert!(q.sent.lock().unwrap().is_empty());
    assert_eq!((n.stats.dma_errors, n.stats.tx_errors), (1, 2));
    // A ring whose end lies past guest RAM, an oversized incoming frame.
    w32(&mut n, reg::RCR, rcr::AAP);
    w32(&mut n, reg::RBSTART, RAM as u32 - 100);
    q.incoming.lock().unwrap().extend([frame(MAC, 200, 1), frame(MAC, 3000, 2)]);
    assert_eq!(n.poll_rx(), 0);
    assert_eq!((n.stats.dma_errors, n.stats.rx_dropped_oversized), (2, 1));
}

#[test]
fn a_full_ring_drops_and_says_so() {
    let (mut n, q, _mem) = nic();
    w32(&mut n, reg::RBSTART, 0x4000);
    w32(&mut n, reg::RCR, rcr::AAP | rcr::WRAP);
    w8(&mut n, reg::CR, cr::RE);
    // 8 KiB ring, 1524 bytes per 1514-byte frame: 5 fit (the ring never fills completely).
    q.incoming.lock().unwrap().extend((0..8).map(|i| frame(MAC, 1514, i)));
    assert_eq!(n.poll_rx(), 5);
    assert_eq!((n.stats.rx_frames, n.stats.rx_dropped_ring_full), (5, 3));
    assert_eq!(r16(&mut n, reg::ISR) & isr::RXOVW, isr::RXOVW);
}

/// A driver taking one packet per interrupt (the guest's `irq` mode): after it acks ISR and
/// moves CAPR past one packet, a packet still in the ring raises ROK (and the line) again;
/// past the last one, nothing does.
#[test]
fn capr_past_one_packet_of_two_raises_rok_again() {
    let (mut n, q, _mem) = nic();
    w32(&mut n, reg::RBSTART, 0x4000);
    w32(&mut n, reg::RCR, rcr::APM | rcr::WRAP);
    w8(&mut n, reg::CR, cr::RE);
    w16(&mut n, reg::IMR, isr::ROK);
    q.incoming.lock().unwrap().extend([frame(MAC, 60, 1), frame(MAC, 60, 2)]);
    assert_eq!(n.poll_rx(), 2);
    assert_eq!(n.stats.interrupts, 1);
    let per_packet = 4 + 60 + 4;
    for (taken, more) in [(1u16, true), (2, false)] {
        let status = r16(&mut n, reg::ISR);
        w16(&mut n, reg::ISR, status);
        assert!(!n.irq_level(), "acked");
        w16(&mut n, reg::CAPR, (taken * per_packet).wrapping_sub(16));
        assert_eq!(r16(&mut n, reg::ISR) & isr::ROK != 0, more, "after {taken} packet(s)");
        assert_eq!(n.irq_level(), more);
    }
    assert_eq!(n.stats.interrupts, 2, "one rising edge per packet");
}

/// A deterministic stream of numbers.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn garbage_never_panics_and_a_reset_nic_still_works() {
    let (mut n, q, mem) = nic();
    let mut rng = Lcg(42);
    for _ in 0..200_000 {
        let port = BASE.wrapping_add((rng.next() % 0x120) as u16);
        let size = [1usize, 2, 4][(rng.next() % 3) as usize];
        if rng.next().is_multiple_of(2) {
            let v = (rng.next() as u32).to_le_bytes();
            n.write(port, &v[..size]);
        } else {
            let mut b = [0u8; 4];
            n.read(port, &mut b[..size]);
        }
        if rng.next().is_multiple_of(64) {
            let len = (rng.next() % 2000) as usize;
            q.incoming.lock().unwrap().push_back(frame(MAC, len.max(14), rng.next() as u8));
            n.poll_rx();
        }
    }
    // Whatever happened, a reset and a well-formed transmit work.
    q.sent.lock().unwrap().clear();
    w8(&mut n, reg::CR, cr::RST);
    w8(&mut n, reg::CR, cr::TE);
    let f = frame([0xff; 6], 64, 9);
    mem.write_slice(&f, GuestAddress(0x3000)).unwrap();
    w32(&mut n, reg::TSAD0, 0x3000);
    w32(&mut n, reg::TSD0, 64);
    assert_eq!(q.sent.lock().unwrap().as_slice(), &[f]);
}

#[test]
fn register_accesses_are_counted_by_offset() {
    let (mut n, _q, _mem) = nic();
    for _ in 0..3 {
        r16(&mut n, reg::ISR);
    }
    w16(&mut n, reg::ISR, 0xffff);
    w16(&mut n, reg::IMR, 0);
    let acc = |offset, reads, writes| NicRegisterAccesses { offset, reads, writes };
    assert_eq!(n.stats.registers, vec![acc(reg::IMR, 0, 1), acc(reg::ISR, 3, 1)]);
}
