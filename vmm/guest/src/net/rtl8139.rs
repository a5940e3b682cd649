//! A driver for tinyvmm's RTL8139-compatible NIC (I/O base 0xc000, IRQ 5), written after
//! Linux's `8139too`: its register accessors are real functions named like Linux's
//! (`ioread8/16/32`, `iowrite8/16/32`), so a profiler attributes every NIC exit to one of
//! them and, through the frame pointer, to the driver function that called it: the
//! paper's Table 2.
//!
//! Receive modes (`--nic-mode`):
//! - `irq`: `rtl8139_interrupt` reads ISR, acks it, takes one packet from the ring (moving
//!   CAPR), and EOIs. Per packet: `ioread16(ISR)`, `iowrite16(ISR)`, `iowrite16(CAPR)` and
//!   the EOI (`ack_irq`), each one exit. (A packet left in the ring when CAPR moves raises
//!   ROK again, so one packet per interrupt never strands one.)
//! - `napi`: `rtl8139_interrupt` reads ISR, masks the NIC's interrupts (`iowrite16(IMR,
//!   0)`) and EOIs; `rtl8139_poll` then takes packets while `ioread8(CR)` says the ring is
//!   not empty, up to [`NAPI_BUDGET`] per pass (each: `ioread8(CR)`, `iowrite16(CAPR)`),
//!   and when it finds the ring empty acks ISR, looks once more, and unmasks (`iowrite16(IMR)`).
//!
//! Transmit: four descriptors whose addresses are set once (`TSAD0-3`); per frame
//! `ioread32(TSD)` (is the descriptor free?) and `iowrite32(TSD, len)`.
//!
//! Received frames go from the ring into a software queue ([`RX_QUEUE`]) that the stack
//! reads in the main loop: the interrupt handler (irq) or the poll (napi) fills it.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::abi::net::{NicMode, NAPI_BUDGET};
use crate::abi::PORT_NIC;
use crate::io::{inb, inl, inw, outb, outl, outw};
use crate::timer::ack_irq;

pub use crate::abi::rtl8139::{cr, isr, rcr, reg, tsd, WRAP_SLACK};

/// The receive interrupts this driver enables.
pub const RX_BITS: u16 = isr::ROK | isr::RER | isr::RXOVW;
/// RCR: accept physical match, multicast, broadcast; WRAP; RBLEN = 2 (32 KiB ring).
pub const RCR_VALUE: u32 = rcr::APM | rcr::AM | rcr::AB | rcr::WRAP | (2 << 11);
/// The ring's length for offsets; the buffer has 16 + 2048 bytes more (WRAP writes past the
/// end, as with Linux's `RX_BUF_TOT_LEN`).
pub const RING_LEN: usize = 32 * 1024;
const RING_ALLOC: usize = RING_LEN + WRAP_SLACK as usize;
pub const TX_BUF: usize = 1536;
pub const NUM_TX: usize = 4;
/// The smallest frame the chip sends (Linux pads to `ETH_ZLEN`).
const ETH_ZLEN: usize = 60;
/// The NIC's vector: IRQ 5 on the master PIC (base 0x20).
pub const NIC_VECTOR: u8 = 0x20 + crate::abi::NIC_IRQ;

// ---- The accessors: one port instruction each, never inlined (see the module docs). ----

/// Linux's `ioread8`: one 8-bit port read.
#[no_mangle]
#[inline(never)]
pub extern "C" fn ioread8(port: u16) -> u8 {
    inb(port)
}
#[no_mangle]
#[inline(never)]
pub extern "C" fn ioread16(port: u16) -> u16 {
    inw(port)
}
#[no_mangle]
#[inline(never)]
pub extern "C" fn ioread32(port: u16) -> u32 {
    inl(port)
}
/// Linux's `iowrite8` (value first, as in Linux).
#[no_mangle]
#[inline(never)]
pub extern "C" fn iowrite8(v: u8, port: u16) {
    outb(port, v)
}
#[no_mangle]
#[inline(never)]
pub extern "C" fn iowrite16(v: u16, port: u16) {
    outw(port, v)
}
#[no_mangle]
#[inline(never)]
pub extern "C" fn iowrite32(v: u32, port: u16) {
    outl(port, v)
}

#[inline(always)]
fn r(off: u16) -> u16 {
    PORT_NIC + off
}

// ---- Memory the NIC reads and writes (identity-mapped: virtual = guest-physical). ----

#[repr(C, align(16))]
struct Ring([u8; RING_ALLOC]);
static mut RX_RING: Ring = Ring([0; RING_ALLOC]);

#[repr(C, align(16))]
struct TxBufs([[u8; TX_BUF]; NUM_TX]);
static mut TX_BUFS: TxBufs = TxBufs([[0; TX_BUF]; NUM_TX]);

/// Frames received and not yet taken by the stack: a single-producer (interrupt handler or
/// NAPI poll), single-consumer (the stack, in the main loop) ring of slots.
pub const QUEUE_SLOTS: usize = 256;
pub struct RxQueue {
    len: [AtomicU32; QUEUE_SLOTS],
    head: AtomicU32,
    tail: AtomicU32,
}
#[repr(C, align(16))]
struct Slots([[u8; TX_BUF]; QUEUE_SLOTS]);
static mut SLOTS: Slots = Slots([[0; TX_BUF]; QUEUE_SLOTS]);
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU32 = AtomicU32::new(0);
pub static RX_QUEUE: RxQueue = RxQueue { len: [ZERO; QUEUE_SLOTS], head: AtomicU32::new(0), tail: AtomicU32::new(0) };

impl RxQueue {
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Acquire) == self.tail.load(Ordering::Acquire)
    }
    fn is_full(&self) -> bool {
        self.head.load(Ordering::Acquire).wrapping_sub(self.tail.load(Ordering::Acquire)) as usize >= QUEUE_SLOTS
    }
    /// Producer: copies `frame` into the next slot.
    fn push(&self, frame: &[u8]) {
        let h = self.head.load(Ordering::Relaxed);
        let i = h as usize % QUEUE_SLOTS;
        let n = frame.len().min(TX_BUF);
        // SAFETY: slot `i` is not visible to the consumer until `head` moves past it below
        // (the caller checked the queue is not full, so the consumer is not reading it);
        // there is one producer at a time (the NIC interrupt handler in irq mode, the poll
        // in napi mode, which runs with the NIC's interrupts masked).
        unsafe {
            let slots = &raw mut SLOTS;
            (&mut (*slots).0[i])[..n].copy_from_slice(&frame[..n]);
        }
        self.len[i].store(n as u32, Ordering::Relaxed);
        self.head.store(h.wrapping_add(1), Ordering::Release);
    }
    /// Consumer: runs `f` on the oldest frame, then frees its slot.
    pub fn pop<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let t = self.tail.load(Ordering::Relaxed);
        if t == self.head.load(Ordering::Acquire) {
            return None;
        }
        let i = t as usize % QUEUE_SLOTS;
        let n = self.len[i].load(Ordering::Relaxed) as usize;
        // SAFETY: the producer published slot `i` (head moved past it, Acquire above) and
        // does not write it again until `tail` moves past it, after `f` returns.
        let r = unsafe {
            let slots = &raw const SLOTS;
            f(&(&(*slots).0[i])[..n])
        };
        self.tail.store(t.wrapping_add(1), Ordering::Release);
        Some(r)
    }
}

// ---- Driver state. ----

static MODE_NAPI: AtomicBool = AtomicBool::new(false);
/// NAPI: the interrupt handler masked the NIC and the poll has work.
pub static NAPI_SCHEDULED: AtomicBool = AtomicBool::new(false);
/// Offset of the next packet in the ring.
static CUR_RX: AtomicU32 = AtomicU32::new(0);
static CUR_TX: AtomicU32 = AtomicU32::new(0);
pub static RX_FRAMES: AtomicU64 = AtomicU64::new(0);
pub static TX_FRAMES: AtomicU64 = AtomicU64::new(0);
pub static RX_INTERRUPTS: AtomicU64 = AtomicU64::new(0);
pub static NAPI_POLLS: AtomicU64 = AtomicU64::new(0);
/// Ring headers that made no sense (the ring was resynchronised), and frames dropped for a
/// full software queue.
pub static RX_ERRORS: AtomicU64 = AtomicU64::new(0);
pub static RX_QUEUE_DROPS: AtomicU64 = AtomicU64::new(0);
/// Status bits seen in the interrupt handler, ORed (errors show here).
pub static ISR_SEEN: AtomicU32 = AtomicU32::new(0);

pub fn ring_addr() -> u32 {
    (&raw const RX_RING) as u64 as u32
}

pub fn tx_buf_addr(n: usize) -> u32 {
    // SAFETY: only the address of a static is taken (no reference is made).
    (unsafe { (&raw const TX_BUFS.0[n]) }) as u64 as u32
}

/// Resets the chip, reads its MAC, points it at the ring and the transmit buffers, and
/// enables receiving, transmitting and the receive interrupts. Interrupts must be off.
#[inline(never)]
pub fn rtl8139_init(mode: NicMode) -> [u8; 6] {
    MODE_NAPI.store(mode == NicMode::Napi, Ordering::Relaxed);
    iowrite8(cr::RST, r(reg::CR));
    while ioread8(r(reg::CR)) & cr::RST != 0 {}
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = ioread8(r(reg::IDR0 + i as u16));
    }
    CUR_RX.store(0, Ordering::Relaxed);
    CUR_TX.store(0, Ordering::Relaxed);
    iowrite32(ring_addr(), r(reg::RBSTART));
    for n in 0..NUM_TX {
        iowrite32(tx_buf_addr(n), r(reg::TSAD0 + 4 * n as u16));
    }
    iowrite8(cr::RE | cr::TE, r(reg::CR));
    iowrite32(0x0300_0700, r(reg::TCR)); // IFG and DMA burst as 8139too; not interpreted
    iowrite32(RCR_VALUE, r(reg::RCR));
    iowrite16(0xffff, r(reg::ISR));
    iowrite16(RX_BITS, r(reg::IMR));
    crate::timer::idt_set_gate(NIC_VECTOR, nic_isr_entry as *const () as u64);
    mac
}

/// Takes one packet from the ring into the software queue and moves CAPR past it. False
/// if the ring is empty (by the driver's own offset) or its header makes no sense.
#[inline(never)]
pub fn rtl8139_rx_one() -> bool {
    let cur = CUR_RX.load(Ordering::Relaxed) as usize % RING_LEN;
    let ring = &raw const RX_RING;
    // SAFETY: `cur` < RING_LEN, so the 4-byte header is inside the ring buffer; the NIC
    // wrote it before raising ROK / clearing BUFE (DMA by the VMM before the exit that
    // reported it). Volatile: the device writes this memory behind the compiler's back.
    let hdr = unsafe { core::ptr::read_volatile((*ring).0.as_ptr().add(cur) as *const [u8; 4]) };
    let status = u16::from_le_bytes([hdr[0], hdr[1]]);
    let wire = u16::from_le_bytes([hdr[2], hdr[3]]) as usize;
    if status & 1 == 0 || !(4 + 14..=1518).contains(&wire) {
        RX_ERRORS.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    let len = wire - 4; // without the CRC
    if RX_QUEUE.is_full() {
        RX_QUEUE_DROPS.fetch_add(1, Ordering::Relaxed);
    } else {
        // SAFETY: cur + 4 + len <= RING_LEN + 1518 < RING_ALLOC (WRAP: the chip writes a
        // packet whole, past the ring's end into the slack); the bytes are plain data.
        let frame = unsafe { core::slice::from_raw_parts((*ring).0.as_ptr().add(cur + 4), len) };
        RX_QUEUE.push(frame);
    }
    let next = ((cur + wire + 4 + 3) & !3) % RING_LEN;
    CUR_RX.store(next as u32, Ordering::Relaxed);
    iowrite16((next as u16).wrapping_sub(16), r(reg::CAPR));
    RX_FRAMES.fetch_add(1, Ordering::Relaxed);
    true
}

/// The NIC's interrupt handler (called from `nic_isr_entry`, IF clear).
#[no_mangle]
#[inline(never)]
pub extern "C" fn rtl8139_interrupt() {
    let status = ioread16(r(reg::ISR));
    ISR_SEEN.fetch_or(u32::from(status), Ordering::Relaxed);
    if MODE_NAPI.load(Ordering::Relaxed) {
        if status & RX_BITS != 0 {
            iowrite16(0, r(reg::IMR));
            NAPI_SCHEDULED.store(true, Ordering::Release);
        }
    } else {
        iowrite16(status, r(reg::ISR));
        if status & isr::ROK != 0 {
            rtl8139_rx_one();
        }
    }
    ack_irq();
    // After the EOI, so that `ack_irq` is a call (not a tail jump): its caller is this
    // handler in a profile.
    RX_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
}

/// NAPI: one pass over the ring (at most [`NAPI_BUDGET`] packets). When the ring is empty:
/// ack, look once more, and unmask; returns whether the poll is still scheduled.
#[no_mangle]
#[inline(never)]
pub extern "C" fn rtl8139_poll() -> bool {
    NAPI_POLLS.fetch_add(1, Ordering::Relaxed);
    let mut done = 0;
    while done < NAPI_BUDGET {
        if ioread8(r(reg::CR)) & cr::BUFE != 0 {
            // Empty: ack what the packets taken raised, and unmask unless one came since.
            iowrite16(RX_BITS, r(reg::ISR));
            if ioread8(r(reg::CR)) & cr::BUFE == 0 {
                continue;
            }
            NAPI_SCHEDULED.store(false, Ordering::Release);
            iowrite16(RX_BITS, r(reg::IMR));
            return false;
        }
        if RX_QUEUE.is_full() {
            // The stack is behind: leave the rest in the ring for the next pass.
            return true;
        }
        if !rtl8139_rx_one() {
            rtl8139_resync();
        }
        done += 1;
    }
    true
}

/// After a header that makes no sense: skip to where the chip writes next.
fn rtl8139_resync() {
    let cbr = ioread16(r(0x3a)) as usize % RING_LEN;
    CUR_RX.store(cbr as u32, Ordering::Relaxed);
    iowrite16((cbr as u16).wrapping_sub(16), r(reg::CAPR));
}

/// Sends one Ethernet frame through the next descriptor (padded to 60 bytes), after its
/// previous frame is done. `fill` writes the frame into the descriptor's buffer.
#[inline(never)]
pub fn rtl8139_start_xmit<R>(len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
    let n = CUR_TX.load(Ordering::Relaxed) as usize % NUM_TX;
    let tsd = r(reg::TSD0 + 4 * n as u16);
    while ioread32(tsd) & tsd::OWN == 0 {}
    let len = len.min(TX_BUF);
    let bufs = &raw mut TX_BUFS;
    // SAFETY: descriptor n is free (OWN set: the NIC is done with its buffer) and only the
    // main loop transmits, so nothing else touches this buffer until the write to TSD below.
    let buf = unsafe { &mut (*bufs).0[n] };
    let out = fill(&mut buf[..len]);
    let wire = len.max(ETH_ZLEN);
    buf[len..wire].fill(0);
    iowrite32(wire as u32, tsd);
    CUR_TX.store(((n + 1) % NUM_TX) as u32, Ordering::Relaxed);
    TX_FRAMES.fetch_add(1, Ordering::Relaxed);
    out
}

crate::isr_entry!(nic_isr_entry => rtl8139_interrupt);
