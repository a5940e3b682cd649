//! An RTL8139-compatible NIC on the port bus: the registers the Linux `8139too` driver (and
//! the bundled guest's driver) use, with the chip's own receive-ring packet header, so the
//! guest pays the paper's per-register exits (`ioread16(ISR)`, `iowrite16(ISR)`, ...).
//!
//! Registers (offsets from the I/O base): MAC `IDR0-5` (0x00), transmit status `TSD0-3`
//! (0x10, u32) and addresses `TSAD0-3` (0x20, u32), `RBSTART` (0x30), command `CR` (0x37),
//! `CAPR` (0x38, u16), `CBR` (0x3a, u16), interrupt mask `IMR` (0x3c, u16) and status `ISR`
//! (0x3e, u16, write 1 to clear), `TCR` (0x40), `RCR` (0x44).
//!
//! DMA goes through guest memory (`vm-memory`), checked: a descriptor or ring outside guest
//! RAM, an oversized frame or a bad command sets an error status or is ignored, is counted
//! in [`NicStats`], and never harms the VMM. Frames go to and come from a [`NetBackend`].

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::PortDevice;

// The register interface is the contract with the guest's driver: defined once, in the ABI.
pub use tinyvmm_abi::rtl8139::{cr, isr, rcr, reg, tsd, MAX_FRAME, RX_STATUS_ROK, WRAP_SLACK};

/// Where frames go to and come from (a TAP device, or a test's queue).
pub trait NetBackend {
    /// Sends one Ethernet frame; an error counts as a transmit error.
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()>;
    /// One received frame into `buf`, or `Ok(None)` when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>>;
}

/// What the NIC did (`--stats-json`, the hostile-guest tests): the document's own type.
pub use tinyvmm_abi::stats::{NicRegisterAccesses, NicStats};

pub struct Rtl8139 {
    base: u16,
    mem: GuestMemoryMmap,
    backend: Box<dyn NetBackend + Send>,
    mac: [u8; 6],
    tsd: [u32; 4],
    tsad: [u32; 4],
    rbstart: u32,
    cmd: u8,
    /// Offset in the ring where the next packet goes (the chip's CBR).
    rx_write: u32,
    /// Offset of the next packet the driver will read (CAPR + 16).
    rx_read: u32,
    imr: u16,
    isr: u16,
    tcr: u32,
    rcr: u32,
    irq_level: bool,
    pub stats: NicStats,
    /// Buffers for one transmitted and one received frame, kept so that polling (once per
    /// VM exit) allocates nothing.
    frame: Vec<u8>,
    rx_buf: Vec<u8>,
}

impl Rtl8139 {
    pub fn new(base: u16, mac: [u8; 6], mem: GuestMemoryMmap, backend: Box<dyn NetBackend + Send>) -> Self {
        let mut nic = Rtl8139 {
            base,
            mem,
            backend,
            mac,
            tsd: [0; 4],
            tsad: [0; 4],
            rbstart: 0,
            cmd: 0,
            rx_write: 0,
            rx_read: 0,
            imr: 0,
            isr: 0,
            tcr: 0,
            rcr: 0,
            irq_level: false,
            stats: NicStats::default(),
            frame: vec![0; MAX_FRAME + 1],
            rx_buf: vec![0; MAX_FRAME + 64],
        };
        nic.reset();
        nic
    }

    /// The ports this device claims.
    pub fn ports(&self) -> std::ops::RangeInclusive<u16> {
        self.base..=self.base.saturating_add(reg::SIZE - 1)
    }

    /// The interrupt line: high while an unmasked status bit is set.
    pub fn irq_level(&self) -> bool {
        self.irq_level
    }

    fn reset(&mut self) {
        self.tsd = [tsd::OWN; 4]; // every descriptor free
        self.tsad = [0; 4];
        self.cmd = 0;
        self.rx_write = 0;
        self.rx_read = 0;
        self.imr = 0;
        self.isr = 0;
        self.rcr = 0;
        self.update_irq();
    }

    /// The ring's length for offsets (8, 16, 32 or 64 KiB): the driver allocates 16 bytes
    /// more, plus [`WRAP_SLACK`] with `RCR.WRAP`, as Linux's `8139too` and QEMU do.
    fn ring_len(&self) -> u32 {
        8192u32 << ((self.rcr >> 11) & 3)
    }

    fn update_irq(&mut self) {
        let level = self.isr & self.imr != 0;
        if level && !self.irq_level {
            self.stats.interrupts += 1;
        }
        self.irq_level = level;
    }

    fn count(&mut self, off: u16, write: bool) {
        let regs = &mut self.stats.registers;
        let slot = match regs.binary_search_by_key(&off, |a| a.offset) {
            Ok(i) => i,
            Err(i) => {
                regs.insert(i, NicRegisterAccesses { offset: off, reads: 0, writes: 0 });
                i
            }
        };
        let a = &mut regs[slot];
        if write {
            a.writes += 1;
        } else {
            a.reads += 1;
        }
    }

    /// The driver wrote TSD `n`: with OWN clear, send `size` bytes from TSAD `n`.
    fn transmit(&mut self, n: usize, value: u32) {
        self.tsd[n] = value & !(tsd::TOK | tsd::TABT);
        if value & tsd::OWN != 0 || self.cmd & cr::TE == 0 {
            return;
        }
        let size = (value & tsd::SIZE_MASK) as usize;
        let ok = if size == 0 || size > MAX_FRAME {
            self.stats.tx_errors += 1;
            false
        } else if self.mem.read_slice(&mut self.frame[..size], GuestAddress(u64::from(self.tsad[n]))).is_err() {
            self.stats.dma_errors += 1;
            self.isr |= isr::SERR;
            false
        } else if self.backend.send(&self.frame[..size]).is_err() {
            self.stats.tx_errors += 1;
            false
        } else {
            self.stats.tx_frames += 1;
            self.stats.tx_bytes += size as u64;
            true
        };
        self.tsd[n] |= tsd::OWN | if ok { tsd::TOK } else { tsd::TABT };
        self.isr |= if ok { isr::TOK } else { isr::TER };
        self.update_irq();
    }

    /// Whether the ring has room for `need` more bytes at the write offset.
    fn ring_room(&self, need: u32) -> bool {
        let len = self.ring_len();
        let used = (self.rx_write + len - self.rx_read % len) % len;
        used + need < len
    }

    /// Takes frames from the backend into the receive ring while there is room; call it
    /// from the VMM's event loop. Returns how many frames were delivered.
    pub fn poll_rx(&mut self) -> usize {
        let mut delivered = 0;
        let mut buf = std::mem::take(&mut self.rx_buf);
        while let Ok(Some(n)) = self.backend.recv(&mut buf) {
            if n > MAX_FRAME {
                self.stats.rx_dropped_oversized += 1;
                continue;
            }
            if self.deliver(&buf[..n]) {
                delivered += 1;
            }
        }
        self.rx_buf = buf;
        self.update_irq();
        delivered
    }

    fn accepts(&self, frame: &[u8]) -> bool {
        let Some(dst) = frame.get(..6) else { return false };
        self.rcr & rcr::AAP != 0
            || (self.rcr & rcr::APM != 0 && dst == self.mac)
            || (self.rcr & rcr::AB != 0 && dst == [0xff; 6])
            || (self.rcr & rcr::AM != 0 && dst[0] & 1 == 1)
    }

    /// Writes one frame into the ring with the chip's 4-byte header (status, length
    /// including a 4-byte CRC), 4-byte aligned, as the RTL8139 does.
    fn deliver(&mut self, frame: &[u8]) -> bool {
        if self.cmd & cr::RE == 0 || self.rbstart == 0 {
            self.stats.rx_dropped_disabled += 1;
            return false;
        }
        if !self.accepts(frame) {
            return false;
        }
        let len = self.ring_len();
        let total = (4 + frame.len() as u32 + 4 + 3) & !3;
        if !self.ring_room(total) {
            self.stats.rx_dropped_ring_full += 1;
            self.isr |= isr::RXOVW;
            return false;
        }
        let wire_len = frame.len() as u16 + 4; // + CRC
        let mut packet = Vec::with_capacity(total as usize);
        packet.extend_from_slice(&RX_STATUS_ROK.to_le_bytes());
        packet.extend_from_slice(&wire_len.to_le_bytes());
        packet.extend_from_slice(frame);
        packet.resize(total as usize, 0); // CRC (not checked by drivers) and padding
        let base = u64::from(self.rbstart);
        let at = self.rx_write;
        let ok = if self.rcr & rcr::WRAP != 0 || at + total <= len {
            // With WRAP the chip writes past the end into the slack the driver allocated.
            let in_ring = at + total <= len + WRAP_SLACK;
            in_ring && self.mem.write_slice(&packet, GuestAddress(base + u64::from(at))).is_ok()
        } else {
            let first = (len - at) as usize;
            self.mem.write_slice(&packet[..first], GuestAddress(base + u64::from(at))).is_ok()
                && self.mem.write_slice(&packet[first..], GuestAddress(base)).is_ok()
        };
        if !ok {
            self.stats.dma_errors += 1;
            self.isr |= isr::SERR;
            return false;
        }
        self.rx_write = (at + total) % len;
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += frame.len() as u64;
        self.isr |= isr::ROK;
        true
    }

    fn read_reg(&mut self, off: u16, size: usize) -> u32 {
        let r32 = |a: &[u32; 4], base: u16| a[usize::from((off - base) / 4)];
        match off {
            reg::IDR0..=0x05 => u32::from_le_bytes(self.window(&self.mac_bytes(), off - reg::IDR0)),
            reg::TSD0..=0x1f if (off - reg::TSD0).is_multiple_of(4) => r32(&self.tsd, reg::TSD0),
            reg::TSAD0..=0x2f if (off - reg::TSAD0).is_multiple_of(4) => r32(&self.tsad, reg::TSAD0),
            reg::RBSTART => self.rbstart,
            reg::CR => {
                let empty = if self.rx_read % self.ring_len() == self.rx_write { cr::BUFE } else { 0 };
                u32::from(self.cmd | empty)
            }
            reg::CAPR => self.rx_read.wrapping_sub(16) & 0xffff,
            reg::CBR => self.rx_write & 0xffff,
            reg::IMR => u32::from(self.imr),
            reg::ISR => u32::from(self.isr),
            reg::TCR => self.tcr,
            reg::RCR => self.rcr,
            _ => if size == 4 { u32::MAX } else { 0xffff },
        }
    }

    fn mac_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(&self.mac);
        b
    }

    fn window(&self, bytes: &[u8; 8], at: u16) -> [u8; 4] {
        let mut w = [0u8; 4];
        for (i, x) in w.iter_mut().enumerate() {
            *x = bytes.get(usize::from(at) + i).copied().unwrap_or(0);
        }
        w
    }

    fn write_reg(&mut self, off: u16, value: u32) {
        match off {
            reg::IDR0..=0x05 => {
                // Byte-wise, as drivers write the MAC (4-byte writes are split by the caller).
                self.mac[usize::from(off - reg::IDR0)] = value as u8;
            }
            reg::TSD0..=0x1f if (off - reg::TSD0).is_multiple_of(4) => self.transmit(usize::from((off - reg::TSD0) / 4), value),
            reg::TSAD0..=0x2f if (off - reg::TSAD0).is_multiple_of(4) => self.tsad[usize::from((off - reg::TSAD0) / 4)] = value,
            reg::RBSTART => self.rbstart = value,
            reg::CR => {
                let v = value as u8;
                if v & cr::RST != 0 {
                    self.reset();
                    return;
                }
                if v & !(cr::RE | cr::TE) != 0 {
                    self.stats.ignored_writes += 1;
                }
                self.cmd = v & (cr::RE | cr::TE);
            }
            reg::CAPR => {
                // The driver writes its read offset − 16, as a free-running u16: taken modulo
                // the ring. A hostile value only misplaces packets inside the guest's ring.
                self.rx_read = u32::from((value as u16).wrapping_add(16)) % self.ring_len();
                // A packet still in the ring raises ROK again, as a new one would: a driver
                // that takes one packet per interrupt is never left with one unannounced.
                if self.rx_read != self.rx_write {
                    self.isr |= isr::ROK;
                    self.update_irq();
                }
            }
            reg::IMR => {
                self.imr = value as u16;
                self.update_irq();
            }
            reg::ISR => {
                self.isr &= !(value as u16);
                self.update_irq();
            }
            reg::TCR => self.tcr = value,
            reg::RCR => {
                self.rcr = value;
                // A new ring size restarts the ring.
                self.rx_write %= self.ring_len();
                self.rx_read %= self.ring_len();
            }
            _ => self.stats.ignored_writes += 1,
        }
    }
}

impl PortDevice for Rtl8139 {
    fn read(&mut self, port: u16, data: &mut [u8]) {
        let off = port.wrapping_sub(self.base);
        if off >= reg::SIZE {
            data.fill(0xff);
            return;
        }
        self.count(off, false);
        let v = self.read_reg(off, data.len());
        super::put_value(data, v);
    }

    fn write(&mut self, port: u16, data: &[u8]) {
        let off = port.wrapping_sub(self.base);
        if off >= reg::SIZE {
            return;
        }
        self.count(off, true);
        let v = super::le_value(data);
        if off <= 0x05 {
            // MAC bytes one at a time, whatever the access size.
            for (i, b) in data.iter().enumerate() {
                let o = off + i as u16;
                if o <= 0x05 {
                    self.write_reg(o, u32::from(*b));
                }
            }
            return;
        }
        self.write_reg(off, v);
    }
}

#[cfg(test)]
#[path = "rtl8139_tests.rs"]
mod tests;
