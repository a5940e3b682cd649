//! The 16550 UART on COM1 (vm-superio), writing the guest console to stdout. It also
//! picks out the guest's `@@result {json}` report lines for the statistics.

use crate::abi::RESULT_PREFIX;
use crate::bus::PortDevice;
use std::io::Write;
use vm_superio::{Serial, Trigger};

/// The guest polls; the UART raises no interrupt.
pub struct NoIrq;

impl Trigger for NoIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// Line-buffered console: echoes lines to stdout (unless quiet) and keeps result lines.
pub struct Console {
    echo: bool,
    line: Vec<u8>,
    pub results: Vec<String>,
}

/// A console line longer than this is flushed in pieces (a guest could send no newline).
const MAX_LINE: usize = 64 * 1024;

impl Console {
    pub fn new(echo: bool) -> Self {
        Console { echo, line: Vec::new(), results: Vec::new() }
    }

    fn end_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        if let Some(rest) = text.trim_end().strip_prefix(RESULT_PREFIX) {
            self.results.push(rest.to_string());
        }
        if self.echo {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&self.line);
            let _ = out.flush();
        }
        self.line.clear();
    }
}

impl Console {
    /// Ends a last line the guest left without a newline.
    pub fn finish(&mut self) {
        if !self.line.is_empty() {
            self.line.push(b'\n');
            self.end_line();
        }
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            self.line.push(b);
            if b == b'\n' || self.line.len() >= MAX_LINE {
                self.end_line();
            }
        }
        Ok(buf.len())
    }
    /// vm-superio flushes after every byte; lines are written whole by `end_line`.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct Uart {
    base: u16,
    inner: Serial<NoIrq, vm_superio::serial::NoEvents, Console>,
}

impl Uart {
    pub fn new(base: u16, echo: bool) -> Self {
        Uart { base, inner: Serial::new(NoIrq, Console::new(echo)) }
    }
    pub fn console(&mut self) -> &mut Console {
        self.inner.writer_mut()
    }
}

impl PortDevice for Uart {
    fn read(&mut self, port: u16, data: &mut [u8]) {
        let off = port.wrapping_sub(self.base) as u8;
        let v = self.inner.read(off);
        data.fill(0);
        if let Some(d) = data.first_mut() {
            *d = v;
        }
    }
    fn write(&mut self, port: u16, data: &[u8]) {
        let off = port.wrapping_sub(self.base) as u8;
        if let Some(&v) = data.first() {
            // Only the trigger can fail, and NoIrq cannot.
            let _ = self.inner.write(off, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u16 = 0x3f8;

    fn out(u: &mut Uart, off: u16, v: u8) {
        u.write(BASE.wrapping_add(off), &[v]);
    }
    fn inp(u: &mut Uart, off: u16) -> u8 {
        let mut b = [0u8];
        u.read(BASE.wrapping_add(off), &mut b);
        b[0]
    }

    /// Arbitrary accesses at any offset (in the 8 registers and far outside them), any
    /// size, DLAB and loopback toggled at random, from an xorshift seed.
    fn garbage(u: &mut Uart, seed: u32) {
        let mut x = seed;
        for _ in 0..20000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let off = if x & 0x8000_0000 != 0 { (x >> 4) as u16 } else { (x % 8) as u16 };
            let size = [1usize, 2, 4][(x >> 8) as usize % 3];
            let mut b = (x >> 12).to_le_bytes();
            if x & 0x100 != 0 {
                u.write(BASE.wrapping_add(off), &b[..size]);
            } else {
                u.read(BASE.wrapping_add(off), &mut b[..size]);
            }
        }
    }

    /// A driver's init (8N1 at 115200 baud, loopback off, no interrupts), draining what
    /// the receiver holds and clearing latched state, then one result line: checks the
    /// registers and the console exactly.
    fn init_and_print(u: &mut Uart, tag: u32) {
        out(u, 3, 0x80); // LCR: DLAB
        out(u, 0, 0x01); // DLL
        out(u, 1, 0x00); // DLM
        assert_eq!((inp(u, 0), inp(u, 1)), (0x01, 0x00), "divisor latch");
        out(u, 3, 0x03); // LCR: 8N1, DLAB off
        out(u, 1, 0x00); // IER: no interrupts
        out(u, 4, 0x03); // MCR: DTR | RTS, loopback off
        // Drain the receiver, then clear what is latched (as Linux's 8250 startup does:
        // LSR, RX, IIR, MSR): a stale interrupt identification is cleared by reading IIR.
        for _ in 0..=64 {
            if inp(u, 5) & 0x01 == 0 {
                break;
            }
            inp(u, 0);
        }
        for off in [5, 0, 2, 6] {
            inp(u, off);
        }
        assert_eq!(inp(u, 5), 0x60, "LSR: transmitter empty and idle, no data");
        assert_eq!(inp(u, 2), 0xc1, "IIR: FIFO enabled bits, no interrupt pending");
        assert_eq!((inp(u, 3), inp(u, 1), inp(u, 4)), (0x03, 0x00, 0x03), "LCR, IER, MCR");
        out(u, 7, 0xa5);
        assert_eq!(inp(u, 7), 0xa5, "scratch");
        let results = u.console().results.len();
        // A new line first: the garbage may have left a partial line on the console.
        let line = format!("\n@@result {{\"uart\":{tag}}}\n");
        for b in line.bytes() {
            out(u, 0, b);
        }
        assert_eq!(u.console().results.len(), results + 1);
        assert_eq!(u.console().results.last().map(String::as_str), Some(format!("{{\"uart\":{tag}}}").as_str()));
        assert_eq!(inp(u, 5), 0x60, "nothing looped back");
    }

    #[test]
    fn garbage_never_panics_and_an_initialised_port_prints_again() {
        let mut u = Uart::new(BASE, false);
        init_and_print(&mut u, 0);
        for seed in [0x1234_5678u32, 0xdead_beef, 3, 0x0bad_f00d] {
            garbage(&mut u, seed);
            init_and_print(&mut u, seed);
        }
        // Loopback with a full receive FIFO and DLAB left on.
        out(&mut u, 4, 0x10);
        for b in 0..100u8 {
            out(&mut u, 0, b);
        }
        out(&mut u, 3, 0x80);
        init_and_print(&mut u, 1);
    }

    #[test]
    fn a_line_without_newline_is_flushed_in_pieces_and_result_lines_still_parse() {
        let mut u = Uart::new(BASE, false);
        for _ in 0..(MAX_LINE + 10) {
            out(&mut u, 0, b'@');
        }
        assert!(u.console().results.is_empty());
        init_and_print(&mut u, 42);
    }
}
