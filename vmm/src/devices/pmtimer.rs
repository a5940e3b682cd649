//! ACPI PM timer: a free-running 24-bit counter at 3.579545 MHz, read with `in eax, dx`.

use crate::bus::PortDevice;
use std::time::Instant;

pub const PM_TIMER_HZ: u128 = 3_579_545;
pub const PM_TIMER_MASK: u32 = 0x00ff_ffff;

pub struct PmTimer {
    base: u16,
    start: Instant,
}

impl PmTimer {
    pub fn new(base: u16) -> Self {
        PmTimer { base, start: Instant::now() }
    }

    /// The counter now: wall time since the VM started, in PM-timer ticks, mod 2^24.
    pub fn counter(&self) -> u32 {
        let ticks = self.start.elapsed().as_nanos() * PM_TIMER_HZ / 1_000_000_000;
        (ticks as u32) & PM_TIMER_MASK
    }
}

impl PortDevice for PmTimer {
    fn read(&mut self, port: u16, data: &mut [u8]) {
        // A byte read at base+1 sees bits 8..15, as on a real 32-bit register.
        let shift = u32::from(port.wrapping_sub(self.base).min(3)) * 8;
        super::put_value(data, self.counter() >> shift);
    }
    fn write(&mut self, _port: u16, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_at_3_58_mhz_and_stays_24_bit() {
        let mut t = PmTimer::new(0x608);
        let mut a = [0u8; 4];
        t.read(0x608, &mut a);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut b = [0u8; 4];
        t.read(0x608, &mut b);
        let (a, b) = (u32::from_le_bytes(a), u32::from_le_bytes(b));
        assert!(a <= PM_TIMER_MASK && b <= PM_TIMER_MASK);
        let d = b.wrapping_sub(a) & PM_TIMER_MASK;
        // 20 ms is 71591 ticks; the sleep can only be longer.
        assert!((71_000..3_579_545).contains(&d), "delta {d}");
    }

    /// The counter a read between `lo` and `hi` (times since `start`) must return.
    fn ticks(d: std::time::Duration) -> u32 {
        (d.as_nanos() * PM_TIMER_HZ / 1_000_000_000) as u32 & PM_TIMER_MASK
    }

    #[test]
    fn garbage_never_panics_and_the_counter_keeps_wall_time() {
        let mut t = PmTimer::new(0x608);
        let mut x = 0x1234_5678u32;
        for _ in 0..20000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Around the block and far from it (the bus only routes 0x608..=0x60b).
            let port = if x & 0x8000_0000 != 0 { (x >> 8) as u16 } else { 0x606 + (x % 8) as u16 };
            let size = [1usize, 2, 4, 3, 0][(x >> 4) as usize % 5];
            let mut b = x.to_le_bytes();
            if x & 0x100 != 0 {
                t.write(port, &b[..size]);
            } else {
                t.read(port, &mut b[..size]);
            }
        }
        // Writes do not move the clock: a 32-bit read at the base is the time since the
        // timer started, at 3.579545 MHz, 24 bits, exactly.
        for _ in 0..3 {
            let lo = ticks(t.start.elapsed());
            let mut b = [0u8; 4];
            t.read(0x608, &mut b);
            let hi = ticks(t.start.elapsed());
            let v = u32::from_le_bytes(b);
            assert!(v <= PM_TIMER_MASK);
            assert!(v.wrapping_sub(lo) & PM_TIMER_MASK <= hi.wrapping_sub(lo) & PM_TIMER_MASK, "{lo} <= {v} <= {hi}");
            // Byte reads: base+1 sees bits 8..15, base+3 bits 24..31 (always 0).
            let lo = ticks(t.start.elapsed()) >> 8 & 0xff;
            let mut b1 = [0u8];
            t.read(0x609, &mut b1);
            let hi = ticks(t.start.elapsed()) >> 8 & 0xff;
            let v = u32::from(b1[0]);
            assert!(v.wrapping_sub(lo) & 0xff <= hi.wrapping_sub(lo) & 0xff, "{lo} <= {v} <= {hi} (bits 8..15)");
            t.read(0x60b, &mut b1);
            assert_eq!(b1[0], 0);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
