// Rust half of the exactness test: generics, traits, closures and #[inline(always)]
// helpers, so Rust demangling (-C) and Rust inlined chains are compared too.
use std::hint::black_box;

pub trait Device {
    fn io(&mut self, port: u16, v: u8) -> u8;
}

pub struct Uart {
    lsr: u8,
    buf: Vec<u8>,
}

#[inline(always)]
fn mix(port: u16, v: u8) -> u8 {
    (port as u8).wrapping_mul(31) ^ v
}

impl Device for Uart {
    #[inline(never)]
    fn io(&mut self, port: u16, v: u8) -> u8 {
        self.lsr = mix(port, v);
        self.buf.push(self.lsr);
        self.lsr
    }
}

#[inline(never)]
pub fn pio_exit<D: Device>(d: &mut D, ports: &[u16]) -> u32 {
    ports.iter().map(|&p| d.io(p, black_box(1)) as u32).sum()
}

pub mod timer {
    #[inline(always)]
    fn scale(v: u64, hz: u64) -> u64 {
        v * 1000 / hz.max(1)
    }
    #[inline(never)]
    pub fn timer_interrupt(ticks: &mut [u64], hz: u64) -> u64 {
        ticks.iter_mut().fold(0, |acc, t| {
            *t = scale(*t, hz);
            acc + *t
        })
    }
}

fn main() {
    let mut u = Uart { lsr: 0, buf: Vec::new() };
    let ports: Vec<u16> = (0..black_box(16u16)).map(|p| 0x3f8 + p % 8).collect();
    let mut ticks: Vec<u64> = (0..black_box(32u64)).collect();
    println!("{} {}", pio_exit(&mut u, &ports), timer::timer_interrupt(&mut ticks, black_box(100)));
}
