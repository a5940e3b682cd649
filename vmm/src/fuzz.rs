//! Fuzz harnesses for the devices and the batch hypercall, shared by the cargo-fuzz targets
//! (`vmm/fuzz`) and the test that replays their committed corpora (`tests/fuzz_corpora.rs`).
//! Each takes arbitrary bytes, drives the real device code with them, and then checks an
//! invariant that must hold whatever came before (it panics when one does not):
//!
//! - [`port_io`]: the bytes are a sequence of port reads and writes (any port, size 1, 2 or
//!   4, any value), IRQ edges and acknowledges, and PIT ticks. Afterwards: the unclaimed and
//!   null-port counters equal what the sequence did; a PIC initialised as the guest does
//!   delivers IRQ0 at its vector; the PIT programmed for 1000 Hz runs at 1000 Hz; a reset,
//!   a one-sector IDE write and its read-back return the data, and the image holds it.
//! - [`batch_hypercall`]: the bytes are a sequence of hypercalls (queue address, count,
//!   raw entries) over an 8-page fake guest RAM. Each must replay all its entries or none,
//!   with the error the hypercall's documentation gives for the first rule broken, write
//!   OUT values back unchanged and leave a refused queue untouched. Afterwards the same
//!   reset, write and read-back, through well-formed batches.
#![doc(hidden)]

use std::fs::File;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::abi::{BATCH_ENTRY_SIZE, BATCH_MAX, BATCH_OP_IN, BATCH_OP_OUT, PORT_COM1, PORT_DOORBELL, PORT_EXIT, PORT_NULL, PORT_PMTMR};
use crate::bus::PortBus;
use crate::devices::{debug::DebugPorts, ide::Ide, pic::Pic, pit::Pit, pmtimer::PmTimer, serial::Uart};
use crate::hypercall::{replay, BatchError, PioEntry};

const SECTORS: u64 = 8;
/// The fake guest RAM of [`batch_hypercall`]: small, so random addresses often land in it.
const RAM: u64 = 8 * 4096;

/// Ports the device bus claims (IDE included), as `PortBus::new` maps them.
fn claimed(port: u16) -> bool {
    matches!(port, 0x3f8..=0x3ff | 0x40..=0x43 | 0x20..=0x21 | 0xa0..=0xa1 | 0x1f0..=0x1f7 | 0x3f6 | PORT_NULL | PORT_EXIT)
        || (PORT_PMTMR..=PORT_PMTMR + 3).contains(&port)
}

/// Ports worth hitting often: every device register, the doorbell and an unclaimed port.
const PORTS: [u16; 24] = [
    0x1f0, 0x1f1, 0x1f2, 0x1f3, 0x1f4, 0x1f5, 0x1f6, 0x1f7, 0x3f6, 0x20, 0x21, 0xa0, 0xa1, 0x40, 0x41, 0x42, 0x43, 0x3f8, 0x3fd, 0x608, 0x80,
    0x501, 0x510, 0x1234,
];

/// An in-memory disk image (memfd): no file system in the fuzz loop.
fn disk() -> File {
    // SAFETY: memfd_create takes a NUL-terminated name and flags, and returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"tinyvmm-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd was just created and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(SECTORS * 512).expect("size the memfd");
    f
}

fn bus(disk: &File) -> PortBus {
    let ide = Ide::new(disk.try_clone().expect("dup the memfd")).expect("IDE on the memfd");
    PortBus::new(Uart::new(PORT_COM1, false), Pit::new(None), Pic::new(), PmTimer::new(PORT_PMTMR), Some(ide), DebugPorts::default())
}

/// Reads the input a few bytes at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// A port: usually a device register, sometimes any of the 65 536.
    fn port(&mut self) -> u16 {
        let sel = self.u8();
        if sel < 0xe0 {
            PORTS[usize::from(sel) % PORTS.len()]
        } else {
            self.u16()
        }
    }
}

/// Counters the harness predicts from the sequence it ran.
#[derive(Default)]
struct Expected {
    unclaimed: u64,
    null_writes: u64,
    exit_status: Option<u8>,
}

impl Expected {
    fn access(&mut self, port: u16, write: Option<&[u8]>) {
        if !claimed(port) {
            self.unclaimed += 1;
        } else if let Some(data) = write {
            match port {
                PORT_NULL => self.null_writes += 1,
                PORT_EXIT => self.exit_status = data.first().copied(),
                _ => {}
            }
        }
    }
}

pub fn port_io(data: &[u8]) {
    let disk = disk();
    let mut bus = bus(&disk);
    let mut want = Expected::default();
    let mut input = Input(data);
    let mut ops = 0;
    while !input.is_empty() && ops < 4096 {
        ops += 1;
        let op = input.u8();
        let size = [1usize, 2, 4][usize::from(op >> 6) % 3];
        match op & 0x7 {
            0..=2 => {
                let port = input.port();
                let v = input.u32().to_le_bytes();
                want.access(port, Some(&v[..size]));
                bus.write(port, &v[..size]);
            }
            3..=4 => {
                let port = input.port();
                let mut v = [0u8; 4];
                want.access(port, None);
                bus.read(port, &mut v[..size]);
            }
            5 => bus.pic.raise_irq(input.u8()),
            6 => {
                let _ = bus.pic.acknowledge();
            }
            _ => {
                let _ = bus.pit.take_irq(Instant::now() + Duration::from_micros(u64::from(input.u16()) * 37));
            }
        }
    }
    assert_eq!(bus.unclaimed, want.unclaimed, "every access to an unclaimed port is counted, once");
    assert_eq!(bus.debug.null_writes, want.null_writes, "null-port writes");
    assert_eq!(bus.debug.exit_status, want.exit_status, "the exit port holds the last status written");
    pic_delivers_irq0(&mut bus);
    pit_runs_at_1000hz(&mut bus);
    reset_write_read(&mut bus, &disk, u64::from(data.len() as u8) % SECTORS, data.len() as u16, |bus, q| {
        for e in q.iter_mut() {
            let size = usize::from(e.size);
            if e.op == BATCH_OP_OUT {
                bus.write(e.port, &e.value.to_le_bytes()[..size]);
            } else {
                let mut v = [0u8; 4];
                bus.read(e.port, &mut v[..size]);
                e.value = u32::from_le_bytes(v);
            }
        }
    });
}

/// The guest's `pic_init` (vector base 0x20, IRQ0 unmasked), then IRQ0 is delivered at
/// vector 0x20 and an EOI frees the line.
fn pic_delivers_irq0(bus: &mut PortBus) {
    for (port, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xfe)] {
        bus.write(port, &[v]);
    }
    bus.pic.raise_irq(0);
    assert_eq!(bus.pic.acknowledge(), Some(0x20), "IRQ0 at the programmed vector");
    assert!(!bus.pic.has_pending(), "nothing else pending after a re-initialisation");
    let eois = bus.pic.eois;
    bus.write(0x20, &[0x20]);
    assert_eq!(bus.pic.eois, eois + 1);
    bus.pic.raise_irq(0);
    assert_eq!(bus.pic.acknowledge(), Some(0x20), "the EOI freed IRQ0");
    bus.write(0x20, &[0x20]);
}

/// The guest's `pit_init`: channel 0, LSB then MSB, mode 2, count 1193.
fn pit_runs_at_1000hz(bus: &mut PortBus) {
    for (port, v) in [(0x43, 0x34), (0x40, 0xa9), (0x40, 0x04)] {
        bus.write(port, &[v]);
    }
    assert_eq!(bus.pit.programmed_millihz(), 1_000_152, "1193182 / 1193 Hz");
    let due = bus.pit.irq_deadline().expect("channel 0 armed");
    assert!(bus.pit.take_irq(due));
    assert_eq!(bus.pit.irq_deadline(), Some(due + Duration::from_nanos(1193 * 1_000_000_000 / 1_193_182)));
}

fn out(port: u16, value: u8) -> PioEntry {
    PioEntry { op: BATCH_OP_OUT, size: 1, port, value: u32::from(value) }
}
fn inp(port: u16) -> PioEntry {
    PioEntry { op: BATCH_OP_IN, size: 1, port, value: 0 }
}

/// From whatever state: select the master, an SRST pulse, one sector written at `lba` with
/// WRITE SECTORS EXT and read back with READ SECTORS EXT. The register accesses go through
/// `run` (straight to the bus, or as a batch); the data through the data port, as the guest
/// moves it. Checks the statuses, the image and the data.
fn reset_write_read(bus: &mut PortBus, disk: &File, lba: u64, seed: u16, mut run: impl FnMut(&mut PortBus, &mut [PioEntry])) {
    let mut reset = [out(0x1f6, 0x40), out(0x3f6, 0x06), inp(0x3f6), out(0x3f6, 0x02), inp(0x1f7), inp(0x1f1)];
    run(bus, &mut reset);
    assert_eq!([reset[2].value, reset[4].value, reset[5].value], [0x80, 0x50, 0x01], "BSY in reset; DRDY|DSC and diagnostic 1 after");
    let data: Vec<u8> = (0..512u16).map(|i| (i.wrapping_mul(31) ^ seed) as u8).collect();
    for (cmd, read) in [(0x34u8, false), (0x24, true)] {
        let b = |s: u32| (lba >> s) as u8;
        let mut q = vec![inp(0x1f7)];
        for (p, v) in [(0x1f1, 0), (0x1f2, 0), (0x1f3, b(24)), (0x1f4, b(32)), (0x1f5, b(40)), (0x1f1, 0), (0x1f2, 1), (0x1f3, b(0)), (0x1f4, b(8)), (0x1f5, b(16)), (0x1f6, 0x40), (0x1f7, cmd)] {
            q.push(out(p, v));
        }
        q.push(inp(0x1f7));
        run(bus, &mut q);
        assert_eq!((q[0].value, q[13].value), (0x50, 0x58), "ready, then DRQ");
        if read {
            let mut got = vec![0u8; 512];
            for w in got.chunks_exact_mut(2) {
                bus.read(0x1f0, w);
            }
            assert!(got == data, "read back what was written");
        } else {
            for w in data.chunks_exact(2) {
                bus.write(0x1f0, w);
            }
            let mut img = vec![0u8; 512];
            std::os::unix::fs::FileExt::read_exact_at(disk, &mut img, lba * 512).expect("read the image");
            assert!(img == data, "the image holds the sector");
        }
        let mut st = [0u8];
        bus.read(0x1f7, &mut st);
        assert_eq!(st[0], 0x50, "done, no error");
    }
}

/// What the hypercall's documentation says a queue gets: the error of the first rule it
/// breaks (count, then address, then an entry), or every entry run.
fn expected_result(gpa: u64, count: u32, entries: &[PioEntry]) -> Result<u32, BatchError> {
    if count as usize > BATCH_MAX {
        return Err(BatchError::Count);
    }
    if count == 0 {
        return Ok(0);
    }
    let end = gpa.checked_add(u64::from(count) * BATCH_ENTRY_SIZE as u64);
    if end.is_none_or(|e| e > RAM) {
        return Err(BatchError::Address);
    }
    if entries.iter().any(|e| e.op > BATCH_OP_IN || !matches!(e.size, 1 | 2 | 4) || e.port == PORT_DOORBELL) {
        return Err(BatchError::Entry);
    }
    Ok(count)
}

pub fn batch_hypercall(data: &[u8]) {
    let disk = disk();
    let mut bus = bus(&disk);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).expect("fake guest RAM");
    let mut want = Expected::default();
    let mut input = Input(data);
    let mut calls = 0;
    while !input.is_empty() && calls < 256 {
        calls += 1;
        let sel = input.u8();
        let count = match sel & 3 {
            3 => input.u32(),
            _ => u32::from(input.u8() % 72),
        };
        let gpa = match (sel >> 2) & 3 {
            0 => u64::from(input.u16()) % RAM,
            1 => RAM - u64::from(input.u8()),
            2 => u64::MAX - u64::from(input.u8()),
            _ => u64::from(input.u32()),
        };
        // Entries: raw bytes, or well-formed from a few bytes each.
        let raw = sel & 0x10 != 0;
        let n = (count as usize).min(BATCH_MAX);
        let entries: Vec<PioEntry> = (0..n)
            .map(|_| {
                if raw {
                    PioEntry { op: input.u8(), size: input.u8(), port: input.u16(), value: input.u32() }
                } else {
                    let k = input.u8();
                    PioEntry { op: k & 1, size: [1, 2, 4][usize::from(k >> 1) % 3], port: input.port(), value: u32::from(input.u8()) * 0x0101_0101 }
                }
            })
            .collect();
        let in_ram = gpa.checked_add(n as u64 * 8).is_some_and(|e| e <= RAM);
        if in_ram {
            for (i, e) in entries.iter().enumerate() {
                mem.write_obj(*e, GuestAddress(gpa + (i * BATCH_ENTRY_SIZE) as u64)).expect("in RAM");
            }
        }
        let expect = expected_result(gpa, count, &entries[..n.min(count as usize)]);
        let mut seen = Vec::new();
        let got = replay(&mem, &mut bus, gpa, count, |p| seen.push(p));
        assert_eq!(got, expect, "hypercall {calls}: gpa {gpa:#x} count {count}");
        match got {
            Ok(_) => {
                assert_eq!(seen, entries.iter().map(|e| e.port).collect::<Vec<_>>(), "every entry replayed, in order");
                for (i, e) in entries.iter().enumerate() {
                    let back: PioEntry = mem.read_obj(GuestAddress(gpa + (i * BATCH_ENTRY_SIZE) as u64)).expect("in RAM");
                    assert_eq!((back.op, back.size, back.port), (e.op, e.size, e.port), "entry {i}: only the value is written back");
                    if e.op == BATCH_OP_OUT {
                        assert_eq!(back.value, e.value, "entry {i}: an OUT value comes back unchanged");
                    }
                    let v = e.value.to_le_bytes();
                    want.access(e.port, (e.op == BATCH_OP_OUT).then_some(&v[..usize::from(e.size)]));
                }
            }
            Err(_) => {
                assert!(seen.is_empty(), "a refused queue replays nothing");
                if in_ram {
                    for (i, e) in entries.iter().enumerate() {
                        let back: PioEntry = mem.read_obj(GuestAddress(gpa + (i * BATCH_ENTRY_SIZE) as u64)).expect("in RAM");
                        assert_eq!(back, *e, "a refused queue is left as it was");
                    }
                }
            }
        }
    }
    assert_eq!(bus.unclaimed, want.unclaimed, "every replayed access to an unclaimed port is counted, once");
    assert_eq!(bus.debug.null_writes, want.null_writes);
    assert_eq!(bus.debug.exit_status, want.exit_status);
    let gpa = 0x100;
    reset_write_read(&mut bus, &disk, u64::from(data.len() as u8) % SECTORS, data.len() as u16, |bus, q| {
        for (i, e) in q.iter().enumerate() {
            mem.write_obj(*e, GuestAddress(gpa + (i * BATCH_ENTRY_SIZE) as u64)).expect("in RAM");
        }
        assert_eq!(replay(&mem, bus, gpa, q.len() as u32, |_| {}), Ok(q.len() as u32));
        for (i, e) in q.iter_mut().enumerate() {
            *e = mem.read_obj(GuestAddress(gpa + (i * BATCH_ENTRY_SIZE) as u64)).expect("in RAM");
        }
    });
}
