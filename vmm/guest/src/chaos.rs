//! `--workload chaos`: a seeded random stream of port accesses, batch hypercalls with random
//! queues, and random IDE commands, for `--seconds` on the guest's PM timer (`--count` is
//! the seed). The guest counts every access it makes, trapped and replayed, per port, and
//! every doorbell by the status the VMM answered; the test compares those counts with
//! tinyvmm's `--stats-json` (every access handled, rejected or unclaimed, none lost).
//!
//! What it leaves alone, so the run can end and report: the exit port 0x501, the doorbell
//! except as a doorbell (a queue entry naming it must be refused), the console's data port
//! 0x3f8 and its line and modem control (0x3fb, 0x3fc: DLAB or loopback would swallow the
//! report), and guest RAM outside its own queue buffer (a queue the VMM accepts is written
//! back). Every access is one `in`/`out` (no string I/O), so one access is one exit.
//! Interrupts stay disabled throughout: whatever the stream does to the PIC and the PIT,
//! nothing is delivered.

use crate::abi::*;
use crate::batch::pio_batch;
use crate::io::{inb, inl, inw, outb, outl, outw};
use crate::kprint;
use crate::timer::{PM_HZ, PM_MASK};

/// Every port the stream touches; an access's port is always one of these, so the counts
/// are per index. The last `UNCLAIMED` are ports no tinyvmm device claims.
const PORTS: [u16; 36] = [
    0x1f0, 0x1f1, 0x1f2, 0x1f3, 0x1f4, 0x1f5, 0x1f6, 0x1f7, 0x3f6, // IDE
    0x20, 0x21, 0xa0, 0xa1, // PIC
    0x40, 0x41, 0x42, 0x43, // PIT
    PORT_PMTMR, PORT_PMTMR + 1, PORT_PMTMR + 2, PORT_PMTMR + 3, // PM timer
    0x3f9, 0x3fa, 0x3fd, 0x3fe, 0x3ff, // UART: IER, FCR/IIR, LSR, MSR, scratch
    PORT_NULL, // null device
    0x60, 0x64, 0x70, 0x71, 0x2f8, 0xcf8, 0xcfc, 0x1234, 0xdead, // unclaimed
];
const UNCLAIMED: usize = 9;
const PM_INDEX: usize = 17;
const IDE_COMMANDS: [u8; 8] = [0x20, 0x24, 0x30, 0x34, 0xec, 0xea, 0xe7, 0x00];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: never 0 once seeded non-zero.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the guest did, as it counted it.
struct Counts {
    ops: u64,
    trapped: [u64; PORTS.len()],
    replayed: [u64; PORTS.len()],
    /// Doorbells (port 0x510, not in PORTS) by the status the VMM returned: ok, address,
    /// count, entry.
    doorbells: [u64; 4],
    entries: u64,
    /// Doorbells whose status was not the one the hypercall's rules give.
    mismatches: u64,
    ide_commands: u64,
}

static mut COUNTS: Counts = Counts { ops: 0, trapped: [0; PORTS.len()], replayed: [0; PORTS.len()], doorbells: [0; 4], entries: 0, mismatches: 0, ide_commands: 0 };

/// The queue buffer: twice the longest queue, so a queue can start anywhere in its first half.
static mut QUEUE: [PioEntry; 2 * BATCH_MAX] = [PioEntry { op: 0, size: 0, port: 0, value: 0 }; 2 * BATCH_MAX];

fn counts() -> &'static mut Counts {
    let c = &raw mut COUNTS;
    // SAFETY: one vCPU, no interrupt handler touches COUNTS; `run` holds the only
    // reference for the whole workload (it calls this once).
    unsafe { &mut *c }
}

/// One trapped access to `PORTS[i]`: size 1, 2 or 4; a read or a write of `v`.
fn access(c: &mut Counts, i: usize, size: u64, write: bool, v: u32) {
    let port = PORTS[i];
    c.trapped[i] += 1;
    match (size, write) {
        (0, true) => outb(port, v as u8),
        (1, true) => outw(port, v as u16),
        (_, true) => outl(port, v),
        (0, false) => {
            inb(port);
        }
        (1, false) => {
            inw(port);
        }
        (_, false) => {
            inl(port);
        }
    }
}

fn pm_read(c: &mut Counts) -> u32 {
    c.trapped[PM_INDEX] += 1;
    inl(PORT_PMTMR) & PM_MASK
}

/// An IDE command with random task-file registers (LBA mostly on the disk, sometimes far
/// past it), then up to a sector and a half of data-port traffic in either direction.
fn ide_command(c: &mut Counts, r: &mut Rng) {
    let reg = |c: &mut Counts, i: usize, v: u64| access(c, i, 0, true, v as u32);
    reg(c, 6, if r.below(8) == 0 { 0x50 } else { 0x40 }); // LBA, the master; sometimes the absent slave
    let far = r.below(8) == 0;
    for i in 1..=5 {
        let v = if far { r.next() } else if i == 2 { 1 + r.below(3) } else if i == 3 { r.below(64) } else { 0 };
        reg(c, i, v);
    }
    let cmd = if r.below(8) == 0 { r.next() as u8 } else { IDE_COMMANDS[r.below(IDE_COMMANDS.len() as u64) as usize] };
    reg(c, 7, u64::from(cmd));
    c.ide_commands += 1;
    let words = r.below(384);
    let write = r.below(2) == 0;
    for _ in 0..words {
        access(c, 0, 1, write, r.next() as u32);
    }
    access(c, 7, 0, false, 0);
}

/// The status the hypercall's rules give (vmm/src/hypercall.rs): count, then address, then
/// each entry.
fn expected_status(gpa: u64, count: u32, ram: u64, entries: &[PioEntry]) -> u32 {
    if count as usize > BATCH_MAX {
        return BATCH_ERR_COUNT;
    }
    if count == 0 {
        return BATCH_OK;
    }
    if gpa.checked_add(u64::from(count) * BATCH_ENTRY_SIZE as u64).is_none_or(|end| end > ram) {
        return BATCH_ERR_ADDRESS;
    }
    if entries.iter().any(|e| e.op > BATCH_OP_IN || !matches!(e.size, 1 | 2 | 4) || e.port == PORT_DOORBELL) {
        return BATCH_ERR_ENTRY;
    }
    BATCH_OK
}

/// A doorbell with a random queue: usually well-formed entries in the queue buffer,
/// sometimes a malformed entry, a count over the limit, or an address outside RAM.
fn hypercall(c: &mut Counts, r: &mut Rng, ram: u64) {
    let q = &raw mut QUEUE;
    let base = q as u64;
    let count = match r.below(16) {
        0 => BATCH_MAX as u32 + 1 + r.below(1000) as u32,
        1 => r.next() as u32 | 0x8000_0000,
        _ => r.below(BATCH_MAX as u64 + 1) as u32,
    };
    let n = (count as usize).min(BATCH_MAX);
    let start = r.below(BATCH_MAX as u64) as usize;
    let gpa = match r.below(16) {
        0 => ram + r.below(1 << 20) * 8,
        1 => ram.saturating_sub(8 * r.below(u64::from(count.clamp(1, BATCH_MAX as u32)))),
        2 => u64::MAX - r.below(4096),
        _ => base + (start * BATCH_ENTRY_SIZE) as u64,
    };
    let in_buffer = gpa == base + (start * BATCH_ENTRY_SIZE) as u64;
    let bad = if r.below(4) == 0 { r.below(n.max(1) as u64) as usize } else { usize::MAX };
    // SAFETY: QUEUE is only used here, one vCPU, and no reference outlives this function;
    // the slice is within the 2 * BATCH_MAX entries (start < BATCH_MAX, n <= BATCH_MAX).
    let entries = unsafe { &mut (&mut *q)[start..start + n] };
    for (k, e) in entries.iter_mut().enumerate() {
        let i = r.below(PORTS.len() as u64) as usize;
        *e = PioEntry { op: r.below(2) as u8, size: [1, 2, 4][r.below(3) as usize], port: PORTS[i], value: r.next() as u32 };
        if k == bad {
            match r.below(3) {
                0 => e.op = 2 + r.below(254) as u8,
                1 => e.size = [0, 3, 5, 8, 255][r.below(5) as usize],
                _ => e.port = PORT_DOORBELL,
            }
        }
    }
    let want = if in_buffer { expected_status(gpa, count, ram, entries) } else { expected_status(gpa, count, ram, &[]) };
    // A queue outside the buffer is never accepted here: outside RAM, straddling its end, or
    // wrapping (the address rule fails first), so RAM outside the buffer is never written.
    let want = if !in_buffer && want == BATCH_OK && count > 0 { u32::MAX } else { want };
    // SAFETY: the VMM reads and writes back only an accepted queue: `count` <= BATCH_MAX
    // entries at `gpa`, which is then `entries` (in the buffer, borrowed by nothing else;
    // every other address is refused, see above). A refused queue is not touched.
    let status = unsafe { pio_batch(gpa, count) };
    c.doorbells[(status as usize).min(3)] += 1;
    if status != want || status > BATCH_ERR_ENTRY {
        c.mismatches += 1;
    }
    if status == BATCH_OK {
        c.entries += u64::from(count);
        for e in entries.iter() {
            if let Some(i) = PORTS.iter().position(|p| *p == e.port) {
                c.replayed[i] += 1;
            }
        }
    }
}

/// Runs the stream for `seconds` of PM-timer time from `seed`, then prints the counts.
pub fn run(p: &BootParams) {
    let c = counts();
    let mut r = Rng(p.count ^ 0x9e37_79b9_7f4a_7c15 | 1);
    let limit = p.seconds * PM_HZ;
    let mut elapsed = 0u64;
    let mut last = pm_read(c);
    while elapsed < limit {
        for _ in 0..32 {
            c.ops += 1;
            match r.below(10) {
                0..=5 => {
                    let i = r.below(PORTS.len() as u64) as usize;
                    let (size, write, v) = (r.below(3), r.below(2) == 0, r.next() as u32);
                    access(c, i, size, write, v);
                }
                6..=7 => hypercall(c, &mut r, p.ram_size),
                _ => ide_command(c, &mut r),
            }
        }
        let now = pm_read(c);
        elapsed += u64::from(now.wrapping_sub(last) & PM_MASK);
        last = now;
    }
    let unclaimed: u64 = (PORTS.len() - UNCLAIMED..PORTS.len()).map(|i| c.trapped[i] + c.replayed[i]).sum();
    kprint!(
        "@@result {{\"workload\":\"chaos\",\"status\":\"{}\",\"seconds\":{},\"chaos_seed\":{},\"chaos_ops\":{},\"chaos_doorbells\":[{},{},{},{}],\"chaos_entries\":{},\"chaos_unclaimed\":{},\"chaos_mismatches\":{},\"chaos_ide_commands\":{},\"chaos_trapped\":{{",
        if c.mismatches == 0 { "ok" } else { "error" },
        p.seconds, p.count, c.ops, c.doorbells[0], c.doorbells[1], c.doorbells[2], c.doorbells[3], c.entries, unclaimed, c.mismatches, c.ide_commands
    );
    print_ports(&c.trapped);
    kprint!("}},\"chaos_replayed\":{{");
    print_ports(&c.replayed);
    kprint!("}}}}\n");
}

fn print_ports(counts: &[u64; PORTS.len()]) {
    let mut first = true;
    for (port, n) in PORTS.iter().zip(counts) {
        if *n > 0 {
            kprint!("{}\"0x{:x}\":{}", if first { "" } else { "," }, port, n);
            first = false;
        }
    }
}
