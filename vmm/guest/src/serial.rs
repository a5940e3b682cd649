//! Console on COM1. The guest does not poll LSR before each byte: tinyvmm's UART never
//! backs up, and skipping the poll halves the console's exits. QEMU's can (see `platform`).

use crate::abi::PORT_COM1;
use crate::io::{inb, outb};
use crate::platform;

pub struct Console;

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            while platform::poll_lsr() && inb(PORT_COM1 + 5) & 0x20 == 0 {}
            outb(PORT_COM1, b);
        }
        Ok(())
    }
}

#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::serial::Console, $($arg)*);
    }};
}
