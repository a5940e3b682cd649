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
}
