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
