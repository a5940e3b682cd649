//! A minimal 8259A pair: ICW1..ICW4 initialisation, masking (OCW1), EOI (OCW2,
//! specific and non-specific), IRR/ISR reads (OCW3) and fixed priority. Only the master
//! has an interrupt source (IRQ0, the PIT); the slave accepts programming.

use crate::bus::PortDevice;

#[derive(Default, Debug, Clone)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    vector_base: u8,
    /// Next ICW expected on the data port (2, 3, 4), or 0 when initialised.
    init_step: u8,
    icw4: bool,
    single: bool,
    auto_eoi: bool,
    read_isr: bool,
}

impl Chip {
    fn command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1 resets the chip's state.
            *self = Chip { vector_base: self.vector_base, init_step: 2, icw4: v & 1 != 0, single: v & 2 != 0, ..Chip::default() };
        } else if v & 0x08 != 0 {
            if v & 2 != 0 {
                self.read_isr = v & 1 != 0;
            }
        } else {
            match v >> 5 {
                // Non-specific EOI (and rotate-on-non-specific): the highest priority in service.
                1 | 5 if self.isr != 0 => self.isr &= self.isr - 1,
                // Specific EOI (and rotate-on-specific).
                3 | 7 => self.isr &= !(1 << (v & 7)),
                _ => {}
            }
        }
    }

    fn data(&mut self, v: u8) {
        match self.init_step {
            2 => {
                self.vector_base = v & 0xf8;
                self.init_step = if !self.single { 3 } else if self.icw4 { 4 } else { 0 };
            }
            3 => self.init_step = if self.icw4 { 4 } else { 0 },
            4 => {
                self.auto_eoi = v & 2 != 0;
                self.init_step = 0;
            }
            _ => self.imr = v,
        }
    }

    /// The IRQ to deliver: the lowest pending unmasked line, if nothing of equal or
    /// higher priority is in service.
    fn pending(&self) -> Option<u8> {
        let p = self.irr & !self.imr;
        if p == 0 || self.init_step != 0 {
            return None;
        }
        let irq = p.trailing_zeros() as u8;
        if self.isr != 0 && self.isr.trailing_zeros() as u8 <= irq {
            return None;
        }
        Some(irq)
    }
}

#[derive(Default)]
pub struct Pic {
    master: Chip,
    slave: Chip,
    /// Edges raised while the same line was still pending (merged, as on real hardware).
    pub coalesced: u64,
    pub eois: u64,
}

impl Pic {
    pub fn new() -> Self {
        Self::default()
    }

    /// An edge on a master line (0..=7).
    pub fn raise_irq(&mut self, irq: u8) {
        let bit = 1u8 << (irq & 7);
        if self.master.irr & bit != 0 {
            self.coalesced += 1;
        }
        self.master.irr |= bit;
    }

    #[inline]
    pub fn has_pending(&self) -> bool {
        self.master.pending().is_some()
    }

    /// The CPU's interrupt acknowledge: moves the line from IRR to ISR, returns the vector.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let irq = self.master.pending()?;
        let bit = 1 << irq;
        self.master.irr &= !bit;
        if !self.master.auto_eoi {
            self.master.isr |= bit;
        }
        Some(self.master.vector_base.wrapping_add(irq))
    }

    /// Whether master line `irq` is requested (IRR) or in service (ISR): a level-triggered
    /// source raises its line again only when neither.
    pub fn is_requested_or_in_service(&self, irq: u8) -> bool {
        let bit = 1u8 << (irq & 7);
        (self.master.irr | self.master.isr) & bit != 0
    }

    pub fn is_masked(&self, irq: u8) -> bool {
        self.master.imr & (1 << (irq & 7)) != 0
    }
}

impl PortDevice for Pic {
    fn read(&mut self, port: u16, data: &mut [u8]) {
        let chip = if port >= 0xa0 { &self.slave } else { &self.master };
        let v = match port & 1 {
            0 if chip.read_isr => chip.isr,
            0 => chip.irr,
            _ => chip.imr,
        };
        data.fill(0);
        if let Some(d) = data.first_mut() {
            *d = v;
        }
    }

    fn write(&mut self, port: u16, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        let is_master = port < 0xa0;
        if is_master && port & 1 == 0 && v & 0x18 == 0 && matches!(v >> 5, 1 | 3 | 5 | 7) {
            self.eois += 1;
        }
        let chip = if is_master { &mut self.master } else { &mut self.slave };
        if port & 1 == 0 {
            chip.command(v)
        } else {
            chip.data(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(p: &mut Pic) {
        for (port, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xfe)] {
            p.write(port, &[v]);
        }
    }

    #[test]
    fn irq0_masking_ack_and_eoi() {
        let mut p = Pic::new();
        init(&mut p);
        p.raise_irq(0);
        assert_eq!(p.acknowledge(), Some(0x20));
        p.raise_irq(0);
        assert!(!p.has_pending(), "in service blocks the same line");
        p.write(0x20, &[0x20]);
        assert_eq!(p.eois, 1);
        assert!(p.has_pending());
        p.write(0x21, &[0xff]);
        assert!(!p.has_pending(), "masked");
        assert!(p.is_masked(0));
        p.raise_irq(0);
        assert_eq!(p.coalesced, 1);
        p.write(0x20, &[0x0b]); // OCW3: read ISR
        let mut b = [0u8];
        p.read(0x20, &mut b);
        assert_eq!(b[0], 0);
    }

    /// Every command and data byte on both chips, edges on any line and acknowledges,
    /// then arbitrary accesses from an xorshift seed.
    fn garbage(p: &mut Pic, seed: u32) {
        for v in 0..=255u8 {
            p.write(0x20 + u16::from(v & 1), &[v]);
            p.write(0xa0 + u16::from(v & 1), &[v]);
            p.raise_irq(v);
            let _ = p.acknowledge();
        }
        let mut x = seed;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let port = [0x20, 0x21, 0xa0, 0xa1][(x % 4) as usize];
            let v = (x >> 8) as u8;
            match (x >> 16) % 5 {
                0 | 1 => p.write(port, &[v]),
                2 => p.read(port, &mut [0u8; 2][..1 + (v & 1) as usize]),
                3 => p.raise_irq(v),
                _ => {
                    let _ = p.acknowledge();
                }
            }
        }
    }

    fn read(p: &mut Pic, port: u16) -> u8 {
        let mut b = [0u8];
        p.read(port, &mut b);
        b[0]
    }

    /// The guest's `pic_init` (ICW1..ICW4, vector base 0x20, all masked), IRQ0 unmasked,
    /// then one tick through to its EOI, checking IMR, IRR, ISR and the vector exactly.
    fn init_and_take_one_tick(p: &mut Pic) {
        for (port, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xff)] {
            p.write(port, &[v]);
        }
        assert_eq!(read(p, 0x21), 0xff, "IMR");
        assert_eq!(read(p, 0x20), 0, "IRR: ICW1 cleared it");
        assert!(!p.has_pending());
        p.raise_irq(0);
        assert!(!p.has_pending(), "masked");
        p.write(0x21, &[0xfe]);
        assert!(!p.is_masked(0) && p.is_masked(1));
        assert!(p.has_pending(), "the edge raised while masked is delivered once unmasked");
        assert_eq!(read(p, 0x20), 0x01, "IRR");
        assert_eq!(p.acknowledge(), Some(0x20));
        assert_eq!(p.acknowledge(), None, "acknowledged once");
        p.write(0x20, &[0x0b]); // OCW3: read ISR
        assert_eq!(read(p, 0x20), 0x01, "ISR: IRQ0 in service");
        p.raise_irq(0);
        assert!(!p.has_pending(), "in service: the next tick waits for the EOI");
        let eois = p.eois;
        p.write(0x20, &[0x20]); // Non-specific EOI, as `ack_irq`.
        assert_eq!(p.eois, eois + 1);
        assert_eq!(read(p, 0x20), 0, "ISR empty after the EOI");
        assert_eq!(p.acknowledge(), Some(0x20), "the waiting tick");
        p.write(0x20, &[0x60]); // Specific EOI for IRQ0.
        assert_eq!(p.eois, eois + 2);
        assert_eq!(read(p, 0x20), 0);
        p.write(0x20, &[0x0a]); // OCW3: back to reading IRR
        assert_eq!(read(p, 0x20), 0);
        assert!(!p.has_pending());
    }

    #[test]
    fn garbage_never_panics_and_reinitialising_gives_a_working_irq0() {
        for seed in [0x1234_5678u32, 0xdead_beef, 1, 0x0bad_f00d] {
            let mut p = Pic::new();
            init_and_take_one_tick(&mut p);
            garbage(&mut p, seed);
            init_and_take_one_tick(&mut p);
            // Garbage that stops in the middle of an initialisation sequence.
            p.write(0x20, &[0x13]);
            p.write(0x21, &[0x48]);
            init_and_take_one_tick(&mut p);
        }
    }
}
