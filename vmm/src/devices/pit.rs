//! i8254 PIT. Channel 0 drives IRQ0 in modes 2 (rate generator) and 3 (square wave);
//! every channel supports LSB/MSB/LSB-then-MSB access, the counter-latch command,
//! read-back (count and status), and a written count of 0 meaning 65536. BCD counting is
//! stored in the status but the count is kept binary.
//!
//! `--pit-hz HZ` rescales transparently, like the paper's `pit_load_count` change: the
//! guest's reload value and every counter read stay exactly what the guest programmed
//! (e.g. 1193 for 1000 Hz, counting at 1.193182 MHz), and only the IRQ0 period is
//! stretched to 1/HZ.

use crate::bus::PortDevice;
use std::time::{Duration, Instant};

pub const PIT_HZ: u64 = 1_193_182;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Access {
    Lsb,
    Msb,
    Word,
}

#[derive(Clone, Debug)]
struct Channel {
    mode: u8,
    access: Access,
    bcd: bool,
    /// 1..=65536 (a written 0 means 65536).
    reload: u32,
    /// When the current count was loaded; None until the guest writes one.
    loaded_at: Option<Instant>,
    null_count: bool,
    write_lsb: Option<u8>,
    read_msb_next: bool,
    latch: Option<u16>,
    latch_msb_next: bool,
    status_latch: Option<u8>,
}

impl Channel {
    fn new() -> Self {
        Channel {
            mode: 0,
            access: Access::Word,
            bcd: false,
            reload: 65536,
            loaded_at: None,
            null_count: true,
            write_lsb: None,
            read_msb_next: false,
            latch: None,
            latch_msb_next: false,
            status_latch: None,
        }
    }

    fn elapsed_ticks(&self, now: Instant) -> u64 {
        match self.loaded_at {
            Some(t) => (now.saturating_duration_since(t).as_nanos() * PIT_HZ as u128 / 1_000_000_000) as u64,
            None => 0,
        }
    }

    /// The count as the guest would read it now.
    fn count(&self, now: Instant) -> u16 {
        let r = u64::from(self.reload);
        let e = self.elapsed_ticks(now);
        if self.loaded_at.is_none() {
            return r as u16;
        }
        let c = match self.mode {
            2 => r - e % r,
            // Square wave counts down by two each tick, twice per period (as QEMU models it).
            3 => r - (2 * e) % r,
            _ => r.wrapping_sub(e) & 0xffff,
        };
        c as u16
    }

    fn output(&self, now: Instant) -> bool {
        let r = u64::from(self.reload);
        let e = self.elapsed_ticks(now);
        match self.mode {
            2 => e % r != r - 1,
            3 => e % r < r.div_ceil(2),
            _ => self.loaded_at.is_some() && e >= r,
        }
    }

    fn status(&self, now: Instant) -> u8 {
        let rw = match self.access {
            Access::Lsb => 1,
            Access::Msb => 2,
            Access::Word => 3,
        };
        (u8::from(self.output(now)) << 7)
            | (u8::from(self.null_count) << 6)
            | (rw << 4)
            | ((self.mode & 7) << 1)
            | u8::from(self.bcd)
    }

    fn write_count(&mut self, v: u8, now: Instant) -> bool {
        let value = match self.access {
            Access::Lsb => u32::from(v),
            Access::Msb => u32::from(v) << 8,
            Access::Word => match self.write_lsb.take() {
                None => {
                    self.write_lsb = Some(v);
                    return false;
                }
                Some(lsb) => u32::from(lsb) | u32::from(v) << 8,
            },
        };
        self.reload = if value == 0 { 65536 } else { value };
        self.loaded_at = Some(now);
        self.null_count = false;
        true
    }

    fn read_byte(&mut self, now: Instant) -> u8 {
        if let Some(s) = self.status_latch.take() {
            return s;
        }
        if let Some(l) = self.latch {
            let b = match self.access {
                Access::Lsb => {
                    self.latch = None;
                    l as u8
                }
                Access::Msb => {
                    self.latch = None;
                    (l >> 8) as u8
                }
                Access::Word => {
                    if self.latch_msb_next {
                        self.latch = None;
                        self.latch_msb_next = false;
                        (l >> 8) as u8
                    } else {
                        self.latch_msb_next = true;
                        l as u8
                    }
                }
            };
            return b;
        }
        let c = self.count(now);
        match self.access {
            Access::Lsb => c as u8,
            Access::Msb => (c >> 8) as u8,
            Access::Word => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    c as u8
                } else {
                    (c >> 8) as u8
                }
            }
        }
    }
}

pub struct Pit {
    ch: [Channel; 3],
    /// `--pit-hz`: the IRQ0 rate delivered instead of the programmed one.
    deliver_hz: Option<u32>,
    next_irq: Option<Instant>,
    period: Duration,
    /// IRQ0 edges delivered, and periods that passed while the VMM was late (dropped,
    /// never replayed as fake ticks).
    pub irqs: u64,
    pub irqs_missed: u64,
}

impl Pit {
    pub fn new(deliver_hz: Option<u32>) -> Self {
        Pit {
            ch: [Channel::new(), Channel::new(), Channel::new()],
            deliver_hz: deliver_hz.filter(|&h| h > 0),
            next_irq: None,
            period: Duration::ZERO,
            irqs: 0,
            irqs_missed: 0,
        }
    }

    /// The rate the guest programmed on channel 0, in mHz (0 if not periodic).
    pub fn programmed_millihz(&self) -> u64 {
        let c = &self.ch[0];
        if c.loaded_at.is_some() && matches!(c.mode, 2 | 3) {
            PIT_HZ * 1000 / u64::from(c.reload)
        } else {
            0
        }
    }

    fn arm_channel0(&mut self, now: Instant) {
        let c = &self.ch[0];
        self.next_irq = None;
        if c.loaded_at.is_none() {
            return;
        }
        self.period = match self.deliver_hz {
            Some(hz) => Duration::from_nanos(1_000_000_000 / u64::from(hz)),
            None => Duration::from_nanos(u64::from(c.reload) * 1_000_000_000 / PIT_HZ),
        };
        // One-shot modes fire once at terminal count; periodic ones every period.
        self.next_irq = Some(now + self.period);
    }

    /// When IRQ0 is next due, if channel 0 is counting.
    #[inline]
    pub fn irq_deadline(&self) -> Option<Instant> {
        self.next_irq
    }

    /// Called once `now >= irq_deadline()`: returns true if an IRQ0 edge is due, and
    /// moves the deadline past `now` (periods that were missed are counted, not queued).
    pub fn take_irq(&mut self, now: Instant) -> bool {
        let Some(due) = self.next_irq else { return false };
        if now < due {
            return false;
        }
        self.irqs += 1;
        if !matches!(self.ch[0].mode, 2 | 3) || self.period.is_zero() {
            self.next_irq = None;
            return true;
        }
        let late = now.duration_since(due).as_nanos() / self.period.as_nanos();
        let late = u64::try_from(late).unwrap_or(u64::MAX);
        self.irqs_missed += late;
        let steps = u32::try_from(late.saturating_add(1)).unwrap_or(u32::MAX);
        self.next_irq = due.checked_add(self.period.saturating_mul(steps));
        true
    }

    fn control(&mut self, v: u8, now: Instant) {
        let sel = v >> 6;
        if sel == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
            for i in 0..3 {
                if v & (2 << i) == 0 {
                    continue;
                }
                let c = &mut self.ch[i];
                if v & 0x10 == 0 && c.status_latch.is_none() {
                    c.status_latch = Some(c.status(now));
                }
                if v & 0x20 == 0 && c.latch.is_none() {
                    c.latch = Some(c.count(now));
                    c.latch_msb_next = false;
                }
            }
            return;
        }
        let c = &mut self.ch[usize::from(sel)];
        let rw = (v >> 4) & 3;
        if rw == 0 {
            if c.latch.is_none() {
                c.latch = Some(c.count(now));
                c.latch_msb_next = false;
            }
            return;
        }
        c.access = match rw {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        };
        let mode = (v >> 1) & 7;
        c.mode = if mode >= 6 { mode - 4 } else { mode };
        c.bcd = v & 1 != 0;
        c.loaded_at = None;
        c.null_count = true;
        c.write_lsb = None;
        c.read_msb_next = false;
        c.latch = None;
        c.status_latch = None;
        if sel == 0 {
            self.next_irq = None;
        }
    }
}

impl PortDevice for Pit {
    fn read(&mut self, port: u16, data: &mut [u8]) {
        let now = Instant::now();
        let v = match port {
            0x40..=0x42 => self.ch[usize::from(port - 0x40)].read_byte(now),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(d) = data.first_mut() {
            *d = v;
        }
    }

    fn write(&mut self, port: u16, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        let now = Instant::now();
        match port {
            0x43 => self.control(v, now),
            0x40..=0x42 => {
                let i = usize::from(port - 0x40);
                if self.ch[i].write_count(v, now) && i == 0 {
                    self.arm_channel0(now);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(p: &mut Pit, port: u16, v: u8) {
        p.write(port, &[v]);
    }
    fn r(p: &mut Pit, port: u16) -> u8 {
        let mut b = [0u8];
        p.read(port, &mut b);
        b[0]
    }

    #[test]
    fn mode2_word_access_latch_and_period() {
        let mut p = Pit::new(None);
        w(&mut p, 0x43, 0x34);
        w(&mut p, 0x40, 0xa9);
        assert!(p.irq_deadline().is_none(), "armed after the LSB alone");
        w(&mut p, 0x40, 0x04);
        assert_eq!(p.ch[0].reload, 1193);
        assert_eq!(p.period, Duration::from_nanos(1193 * 1_000_000_000 / PIT_HZ));
        w(&mut p, 0x43, 0x00);
        let c = u16::from(r(&mut p, 0x40)) | u16::from(r(&mut p, 0x40)) << 8;
        assert!((1..=1193).contains(&c), "count {c}");
        assert_eq!(p.programmed_millihz(), PIT_HZ * 1000 / 1193);
    }

    #[test]
    fn zero_means_65536_and_msb_only_access() {
        let mut p = Pit::new(None);
        w(&mut p, 0x43, 0x36); // ch0, word, mode 3
        w(&mut p, 0x40, 0);
        w(&mut p, 0x40, 0);
        assert_eq!(p.ch[0].reload, 65536);
        w(&mut p, 0x43, 0x24); // ch0, MSB only, mode 2
        w(&mut p, 0x40, 0x12);
        assert_eq!(p.ch[0].reload, 0x1200);
        w(&mut p, 0x43, 0xc2); // read-back status + count of ch0
        let status = r(&mut p, 0x40);
        assert_eq!(status & 0x3f, (2 << 4) | (2 << 1), "status {status:#x}");
        let msb = r(&mut p, 0x40);
        assert!(msb <= 0x12);
    }

    #[test]
    fn pit_hz_rescales_irq_but_not_counter() {
        let mut p = Pit::new(Some(100));
        w(&mut p, 0x43, 0x34);
        w(&mut p, 0x40, 0xa9);
        w(&mut p, 0x40, 0x04);
        assert_eq!(p.period, Duration::from_millis(10));
        assert_eq!(p.ch[0].reload, 1193);
        w(&mut p, 0x43, 0x00);
        let c = u16::from(r(&mut p, 0x40)) | u16::from(r(&mut p, 0x40)) << 8;
        assert!(c <= 1193);
    }

    #[test]
    fn late_ticks_are_dropped_not_replayed() {
        let mut p = Pit::new(Some(1000));
        w(&mut p, 0x43, 0x34);
        w(&mut p, 0x40, 0xa9);
        w(&mut p, 0x40, 0x04);
        let due = p.irq_deadline().unwrap();
        assert!(p.take_irq(due + Duration::from_micros(5500)));
        assert_eq!(p.irqs_missed, 5);
        assert!(!p.take_irq(due + Duration::from_micros(5600)));
        assert!(p.irq_deadline().unwrap() > due + Duration::from_micros(5500));
    }

    /// Arbitrary control words, counts and reads on every PIT port (and a few beyond),
    /// with IRQ0 taken at arbitrary times, from an xorshift seed.
    fn garbage(p: &mut Pit, seed: u32) {
        for v in 0..=255u8 {
            w(p, 0x43, v);
            w(p, 0x40 + u16::from(v % 3), v);
            r(p, 0x40 + u16::from(v % 4));
            let _ = p.take_irq(Instant::now() + Duration::from_secs(1));
        }
        let mut x = seed;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let port = 0x3e + (x % 8) as u16; // 0x3e..=0x45
            let v = (x >> 8) as u8;
            match (x >> 16) % 4 {
                0 | 1 => w(p, port, v),
                2 => {
                    r(p, port);
                }
                _ => {
                    let _ = p.take_irq(Instant::now() + Duration::from_micros(u64::from(v) * 97));
                }
            }
        }
    }

    /// What the guest's `pit_init` does (channel 0, LSB then MSB, mode 2, 1193 = 1000 Hz),
    /// then checks the programmed rate, the delivered period, the counter and the status,
    /// exactly; then channel 2 as `verify_pmtmr_rate` programs it.
    fn program_1000hz_and_check(p: &mut Pit, deliver_hz: Option<u32>) {
        let before = Instant::now();
        w(p, 0x43, 0x34);
        w(p, 0x40, 0xa9);
        w(p, 0x40, 0x04);
        let armed = Instant::now();
        assert_eq!(p.ch[0].reload, 1193);
        assert_eq!(p.programmed_millihz(), 1_000_152, "1193182 / 1193 Hz");
        let period = match deliver_hz {
            None => Duration::from_nanos(1193 * 1_000_000_000 / PIT_HZ),
            Some(hz) => Duration::from_nanos(1_000_000_000 / u64::from(hz)),
        };
        assert_eq!(p.period, period);
        let due = p.irq_deadline().expect("channel 0 armed");
        assert!(due >= before + period && due <= armed + period, "first IRQ0 one period after the count");
        // Ticks at exactly that period, none missed when taken on time.
        let missed = p.irqs_missed;
        let irqs = p.irqs;
        assert!(!p.take_irq(due - Duration::from_nanos(1)), "not before it is due");
        assert!(p.take_irq(due));
        assert_eq!(p.irq_deadline(), Some(due + period));
        assert!(p.take_irq(due + period));
        assert_eq!(p.irq_deadline(), Some(due + 2 * period));
        assert_eq!((p.irqs, p.irqs_missed), (irqs + 2, missed));
        // Read-back of channel 0's status, then its latched count (LSB, MSB).
        w(p, 0x43, 0xc2);
        let status = r(p, 0x40);
        assert_eq!(status & 0x7f, (3 << 4) | (2 << 1), "status {status:#x}: count loaded, LSB+MSB, mode 2, binary");
        let c = u16::from(r(p, 0x40)) | u16::from(r(p, 0x40)) << 8;
        assert!((1..=1193).contains(&c), "count {c}");
        // Channel 2 free-running for the calibration: count 0 = 65536; a latched count is
        // read LSB then MSB, and does not touch channel 0.
        w(p, 0x43, 0xb4);
        w(p, 0x42, 0);
        w(p, 0x42, 0);
        assert_eq!((p.ch[2].reload, p.ch[2].mode, p.ch[2].access), (65536, 2, Access::Word));
        w(p, 0x43, 0x80);
        assert!(p.ch[2].latch.is_some());
        r(p, 0x42);
        r(p, 0x42);
        assert_eq!(p.ch[2].latch, None, "both latched bytes read");
        assert_eq!((p.ch[0].reload, p.period, p.irq_deadline()), (1193, period, Some(due + 2 * period)));
    }

    #[test]
    fn garbage_never_panics_and_programming_a_rate_gives_that_rate() {
        for (seed, deliver) in [(0x1234_5678u32, None), (0xdead_beef, Some(100)), (99, None), (0x0bad_f00d, Some(250))] {
            let mut p = Pit::new(deliver);
            garbage(&mut p, seed);
            program_1000hz_and_check(&mut p, deliver);
            // And again after a second round of garbage on the running timer.
            garbage(&mut p, seed.rotate_left(7));
            program_1000hz_and_check(&mut p, deliver);
        }
    }

    #[test]
    fn a_half_written_count_or_a_pending_latch_does_not_leak_into_the_next_programming() {
        let mut p = Pit::new(None);
        w(&mut p, 0x43, 0x34);
        w(&mut p, 0x40, 0x55); // LSB only: the MSB never comes.
        w(&mut p, 0x43, 0xc2); // Status and count latched, never read.
        w(&mut p, 0x43, 0x00);
        program_1000hz_and_check(&mut p, None);
    }
}
