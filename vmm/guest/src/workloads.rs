//! The workloads selected by `BootParams::workload`, and the result line.

use crate::abi::*;
use crate::batch::{pio_batch, PioQueue};
use crate::ide::{self, Dir, IdeError, Sector};
use crate::io::{inb, inl, inw, outb, outl, outw};
use crate::kprint;
use crate::timer::{self, pm_read, Calibration, PM_HZ, PM_MASK, TICKS};
use core::sync::atomic::Ordering;

/// The disk pattern: little-endian u64 word `i` of sector `lba`. The tests recompute it.
#[inline(always)]
pub fn pattern_word(lba: u64, i: u64) -> u64 {
    lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i.wrapping_mul(0xd6e8_feb8_6659_fd93) ^ 0x6b76_6d70_726f_6600
}

/// FNV-1a over u64 words, in LBA order.
#[inline(always)]
fn fnv_words(mut h: u64, s: &Sector) -> u64 {
    // SAFETY: Sector is repr(C, align(8)), 512 bytes: it is a valid, aligned [u64; 64]
    // (any bits are a valid u64), borrowed shared for as long as `s`.
    let words = unsafe { &*(s as *const Sector as *const [u64; 64]) };
    for w in words {
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
const FNV_INIT: u64 = 0xcbf2_9ce4_8422_2325;

static mut QUEUE: PioQueue = PioQueue::new();

/// The one batch queue. Callers use the returned reference until they call `queue()`
/// again, never two at once.
fn queue() -> &'static mut PioQueue {
    let q = &raw mut QUEUE;
    // SAFETY: one vCPU, and the timer ISR never touches the queue, so nothing else
    // accesses QUEUE while the reference lives; each caller drops its reference before the
    // next call (see above). No reference to the static mut is made except this one.
    unsafe { &mut *q }
}

struct DiskResult {
    checksum: u64,
    pm_ticks: u64,
    capacity: u64,
    done: u64,
    /// Timer ticks taken during the I/O phase (timer-disk only).
    ticks: u64,
    err: Option<IdeError>,
}

/// PM-timer time is read every 128 sectors too, so a run longer than the counter's
/// 4.7 s wrap is still timed right: 2 + N/128 PM-timer exits per run.
const PM_EVERY: u64 = 128;

#[inline(never)]
fn disk_write_workload(n: u64, batched: bool) -> DiskResult {
    disk_workload(Dir::Write, n, batched, false)
}

#[inline(never)]
fn disk_read_workload(n: u64, batched: bool) -> DiskResult {
    disk_workload(Dir::Read, n, batched, false)
}

/// disk-write with the timer on: IRQ0 unmasked and interrupts enabled over the whole
/// I/O phase (the write loop and the FLUSH), at the programmed 1000 Hz. The IDE code
/// still polls (nIEN set, no disk interrupt); the ISR (`timer_interrupt`) only bumps
/// `TICKS` and writes the EOI in `ack_irq`, so a tick taken in the middle of a command,
/// even inside `rep outsw`, leaves the task file, the queue and the buffer alone. Exits on
/// top of disk-write's: 0x21 two (unmask, mask), 0x20 one per tick (the EOI), and the
/// interrupt windows of ticks that fell due while IF was clear (inside the ISR).
#[inline(never)]
fn timer_disk_workload(n: u64, batched: bool) -> DiskResult {
    disk_workload(Dir::Write, n, batched, true)
}

#[inline(always)]
fn disk_workload(dir: Dir, n: u64, batched: bool, timer_on: bool) -> DiskResult {
    let mut r = DiskResult { checksum: FNV_INIT, pm_ticks: 0, capacity: 0, done: 0, ticks: 0, err: None };
    ide::ide_init();
    match ide::ide_identify() {
        Ok(c) => r.capacity = c,
        Err(e) => {
            r.err = Some(e);
            return r;
        }
    }
    let mut buf = Sector([0; 256]);
    if timer_on {
        TICKS.store(0, Ordering::Relaxed);
        timer::pic_set_mask(0xfe);
    }
    let mut last = pm_read();
    if timer_on {
        // Not `nomem`: a compiler barrier, so nothing moves across it.
        // SAFETY: enables interrupts; IRQ0's gate is installed (idt_init) and its ISR
        // only bumps TICKS (atomic) and writes the EOI, leaving the task file, the queue
        // and `buf` alone.
        unsafe { core::arch::asm!("sti", options(nostack)) };
    }
    let mut lba = 0u64;
    while lba < n {
        if dir == Dir::Write {
            // SAFETY: Sector is repr(C, align(8)), 512 bytes: a valid, aligned [u64; 64];
            // `buf` is borrowed mutably only through `words` until the loop below ends.
            let words = unsafe { &mut *(&mut buf as *mut Sector as *mut [u64; 64]) };
            for (i, w) in words.iter_mut().enumerate() {
                *w = pattern_word(lba, i as u64);
            }
        }
        let q = if batched { Some(queue()) } else { None };
        if let Err(e) = ide::ide_do_rw_disk(dir, lba, &mut buf, q) {
            r.err = Some(e);
            break;
        }
        r.checksum = fnv_words(r.checksum, &buf);
        lba += 1;
        r.done = lba;
        if lba.is_multiple_of(PM_EVERY) && lba < n {
            let now = pm_read();
            r.pm_ticks += (now.wrapping_sub(last) & PM_MASK) as u64;
            last = now;
        }
    }
    if dir == Dir::Write && r.err.is_none() {
        if let Err(e) = ide::ide_flush() {
            r.err = Some(e);
        }
    }
    let now = pm_read();
    r.pm_ticks += (now.wrapping_sub(last) & PM_MASK) as u64;
    if timer_on {
        // SAFETY: disables interrupts; a compiler barrier like the `sti` above.
        unsafe { core::arch::asm!("cli", options(nostack)) };
        timer::pic_set_mask(0xff);
        r.ticks = TICKS.load(Ordering::Relaxed);
    }
    r
}

/// N port writes to the null port, three instructions per iteration: the exit-cost
/// benchmark's guest loop.
#[inline(never)]
fn pio_loop(n: u64) {
    if n == 0 {
        return;
    }
    // SAFETY: n > 0 `out`s to the null port (no memory effect), RCX counted down to 0
    // and declared clobbered, flags changed (not `preserves_flags`).
    unsafe {
        core::arch::asm!("2:", "out dx, al", "dec rcx", "jnz 2b",
            in("dx") PORT_NULL, in("al") 0u8, inout("rcx") n => _, options(nomem, nostack));
    }
}

fn print_calibration(cal: Option<Calibration>) {
    match cal {
        None => kprint!("\"pmtmr_calibrated\":false"),
        Some(c) => kprint!(
            "\"pmtmr_calibrated\":true,\"pmtmr_ok\":{},\"pmtmr_delta\":{},\"pmtmr_expected\":{},\"pmtmr_reads\":{}",
            c.ok, c.pm_delta, c.expected, c.reads
        ),
    }
}

fn print_ide_error(e: Option<IdeError>) {
    if let Some(e) = e {
        kprint!(",\"error\":\"ide\",\"ide_stage\":{},\"ide_status\":{},\"ide_error\":{}", e.stage, e.status, e.error);
    }
}

pub fn run(p: &BootParams, cal: Option<Calibration>) -> u8 {
    let batched = p.flags & FLAG_BATCH_PIO != 0;
    let mut status = 0u8;
    match p.workload {
        WL_DISK_WRITE | WL_DISK_READ => {
            let write = p.workload == WL_DISK_WRITE;
            let r = if write { disk_write_workload(p.count, batched) } else { disk_read_workload(p.count, batched) };
            if r.err.is_some() {
                status = 1;
            }
            let rate = (r.done * PM_HZ).checked_div(r.pm_ticks).unwrap_or(0);
            kprint!(
                "@@result {{\"workload\":\"{}\",\"status\":\"{}\",\"sectors\":{},\"requested\":{},\"batched\":{},\"checksum\":\"0x{:016x}\",\"pm_ticks\":{},\"sectors_per_sec\":{},\"disk_sectors\":{},",
                if write { "disk-write" } else { "disk-read" },
                if status == 0 { "ok" } else { "error" },
                r.done, p.count, batched, r.checksum, r.pm_ticks, rate, r.capacity
            );
            print_calibration(cal);
            print_ide_error(r.err);
            kprint!("}}\n");
        }
        WL_TIMER_DISK => {
            let r = timer_disk_workload(p.count, batched);
            if r.err.is_some() {
                status = 1;
            }
            let rate = (r.done * PM_HZ).checked_div(r.pm_ticks).unwrap_or(0);
            let tick_rate = (r.ticks * PM_HZ).checked_div(r.pm_ticks).unwrap_or(0);
            kprint!(
                "@@result {{\"workload\":\"timer-disk\",\"status\":\"{}\",\"sectors\":{},\"requested\":{},\"batched\":{},\"checksum\":\"0x{:016x}\",\"pm_ticks\":{},\"sectors_per_sec\":{},\"disk_sectors\":{},\"programmed_hz\":{},\"ticks\":{},\"ticks_per_sec\":{},",
                if status == 0 { "ok" } else { "error" },
                r.done, p.count, batched, r.checksum, r.pm_ticks, rate, r.capacity, timer::GUEST_HZ, r.ticks, tick_rate
            );
            print_calibration(cal);
            print_ide_error(r.err);
            kprint!("}}\n");
        }
        WL_TIMER => {
            let r = timer::timer_workload(p.seconds);
            let per_sec = (r.ticks * PM_HZ).checked_div(r.pm_ticks).unwrap_or(0);
            kprint!(
                "@@result {{\"workload\":\"timer\",\"status\":\"ok\",\"seconds\":{},\"programmed_hz\":{},\"ticks\":{},\"pm_ticks\":{},\"ticks_per_sec\":{},",
                p.seconds, timer::GUEST_HZ, r.ticks, r.pm_ticks, per_sec
            );
            print_calibration(cal);
            kprint!("}}\n");
        }
        WL_PIO_LOOP => {
            let t0 = pm_read();
            pio_loop(p.count);
            let t1 = pm_read();
            kprint!(
                "@@result {{\"workload\":\"pio-loop\",\"status\":\"ok\",\"count\":{},\"pm_ticks\":{},",
                p.count, t1.wrapping_sub(t0) & PM_MASK
            );
            print_calibration(cal);
            kprint!("}}\n");
        }
        WL_HOSTILE => hostile(p),
        WL_CHAOS => crate::chaos::run(p),
        WL_NET_ECHO | WL_NET_RX | WL_NET_TX | WL_NET_HOSTILE | WL_NET_TCP_RX => status = crate::net::run(p),
        WL_TRIPLE_FAULT => {
            kprint!("triple fault: ud2 with no exception handlers\n");
            // SAFETY: on purpose: #UD with no IDT gate for it is a triple fault, which
            // tinyvmm reports (KVM_EXIT_SHUTDOWN); nothing after it runs.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
            status = 1;
        }
        _ => {
            kprint!("@@result {{\"status\":\"error\",\"error\":\"unknown workload {}\"}}\n", p.workload);
            status = 2;
        }
    }
    status
}

/// Misbehaves on purpose and reports what the VMM answered each time.
fn hostile(p: &BootParams) {
    let q = queue();
    q.clear();
    q.outb(PORT_NULL, 1);
    let qa = q.entries.as_mut_ptr() as u64;
    // SAFETY: this call and the five below pass queues the VMM refuses (address outside
    // or across the end of RAM, or wrapping; count over BATCH_MAX; a bad op), and a refused
    // queue is neither replayed nor written (pio_batch's contract); `qa` is `q`'s entries.
    let outside = unsafe { pio_batch(p.ram_size + 0x1000, 1) };
    // SAFETY: as above.
    let straddle = unsafe { pio_batch(p.ram_size - 4, 1) };
    // SAFETY: as above.
    let wrap = unsafe { pio_batch(u64::MAX - 3, 2) };
    // SAFETY: as above.
    let too_many = unsafe { pio_batch(qa, BATCH_MAX as u32 + 1) };
    // SAFETY: as above.
    let huge = unsafe { pio_batch(qa, u32::MAX) };
    q.entries[0].op = 7;
    // SAFETY: as above.
    let bad_op = unsafe { pio_batch(qa, 1) };
    q.clear();
    q.push_raw(PioEntry { op: BATCH_OP_OUT, size: 3, port: PORT_NULL, value: 0 });
    let bad_size = q.submit();
    q.clear();
    q.push_raw(PioEntry { op: BATCH_OP_OUT, size: 4, port: PORT_DOORBELL, value: 1 });
    let nested = q.submit();
    q.clear();
    let unk_idx = q.inb(0x1234);
    let batched_unknown = q.submit();
    let batched_unknown_val = q.entries[unk_idx].value;
    // SAFETY: an empty queue: the VMM reads and writes nothing.
    let empty = unsafe { pio_batch(qa, 0) };

    outb(0x1234, 0x55);
    outl(0xdead, 0x1234_5678);
    let in8 = inb(0x1234);
    let in16 = inw(0x5678);
    let in32 = inl(0xdead);

    // IDE: out-of-range LBA in both LBA forms, then a valid read proves the disk recovered.
    ide::ide_init();
    let cap = ide::ide_identify().unwrap_or(0);
    let mut buf = Sector([0; 256]);
    let e48 = ide::ide_do_rw_disk(Dir::Read, cap + 10, &mut buf, None).err();
    let e48w = ide::ide_do_rw_disk(Dir::Write, 1 << 47, &mut buf, None).err();
    // LBA28 READ SECTORS with the top LBA nibble in the device register.
    outb(ide::NSECT, 1);
    outb(ide::LBAL, 0xff);
    outb(ide::LBAM, 0xff);
    outb(ide::LBAH, 0xff);
    outb(ide::DEVICE, 0x4f);
    outb(ide::COMMAND, 0x20);
    let st28 = inb(ide::STATUS);
    let err28 = inb(ide::ERROR);
    let recovered = ide::ide_do_rw_disk(Dir::Read, 0, &mut buf, None).is_ok();
    let unknown_cmd = {
        outb(ide::DEVICE, 0x40);
        outb(ide::COMMAND, 0x77);
        (inb(ide::STATUS), inb(ide::ERROR))
    };
    let code = |e: Option<IdeError>| e.map(|e| (e.status as u32) << 8 | e.error as u32).unwrap_or(0);
    // Arbitrary accesses to every IDE register, then what a driver does from an unknown
    // state: a reset, one sector written and read back. Then the same with batched
    // register accesses, after all the malformed queues above.
    ide_garbage(0x1234_5678, 3000);
    let (garbage_recovery, garbage_readback) = reset_write_read_back(RECOVERY_LBA, None);
    let (batch_recovery, batch_readback) = reset_write_read_back(RECOVERY_LBA + 1, Some(queue()));
    kprint!(
        "@@result {{\"workload\":\"hostile\",\"status\":\"ok\",\"queue_outside_ram\":{},\"queue_straddles_ram_end\":{},\"queue_address_wraps\":{},\"queue_count_over_limit\":{},\"queue_count_huge\":{},\"queue_bad_op\":{},\"queue_bad_size\":{},\"queue_nested_doorbell\":{},\"queue_unknown_port\":{},\"queue_unknown_port_value\":{},\"queue_empty\":{},\"unknown_in8\":{},\"unknown_in16\":{},\"unknown_in32\":{},\"disk_sectors\":{},\"lba48_read_out_of_range\":{},\"lba48_write_out_of_range\":{},\"lba28_read_out_of_range\":{},\"ide_recovered\":{},\"ide_unknown_command\":{},\"ide_garbage_recovery\":{},\"ide_garbage_readback\":\"0x{:016x}\",\"batch_recovery\":{},\"batch_readback\":\"0x{:016x}\"}}\n",
        outside, straddle, wrap, too_many, huge, bad_op, bad_size, nested, batched_unknown,
        batched_unknown_val, empty, in8, in16, in32, cap, code(e48), code(e48w),
        (st28 as u32) << 8 | err28 as u32, recovered, (unknown_cmd.0 as u32) << 8 | unknown_cmd.1 as u32,
        garbage_recovery, garbage_readback, batch_recovery, batch_readback
    );
}

/// Where the hostile workload's recovery writes its two sectors (the disk-write pattern).
const RECOVERY_LBA: u64 = 5;

/// `n` arbitrary accesses (xorshift from `seed`) to the IDE registers 0x1f0-0x1f7 and
/// 0x3f6: any register, 8/16/32-bit, in or out, any value, except the write commands
/// (0x30-0x3f become an unknown command), so the image stays what the test expects.
fn ide_garbage(seed: u32, n: u32) {
    let mut x = seed;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let port = [ide::DATA, 0x1f1, 0x1f2, 0x1f3, 0x1f4, 0x1f5, 0x1f6, 0x1f7, ide::CONTROL][(x % 9) as usize];
        let mut v = x >> 8;
        if port == ide::COMMAND && v & 0xf0 == 0x30 {
            v = 0x99;
        }
        match (x >> 4) % 6 {
            0 => outb(port, v as u8),
            1 => outw(port, v as u16),
            2 => outl(port, v),
            3 => {
                inb(port);
            }
            4 => {
                inw(port);
            }
            _ => {
                inl(port);
            }
        }
    }
}

/// A reset, then the disk-write pattern written to `lba` and read back into a cleared
/// buffer. Returns 0 or the first failure (`1 << 16` write, `2 << 16` read, `| status << 8
/// | error`), and the checksum of the sector read back.
fn reset_write_read_back(lba: u64, mut q: Option<&mut PioQueue>) -> (u32, u64) {
    ide::ide_reset();
    let mut buf = Sector([0; 256]);
    // SAFETY: Sector is repr(C, align(8)), 512 bytes: a valid, aligned [u64; 64];
    // `buf` is borrowed mutably only through `words` until the loop below ends.
    let words = unsafe { &mut *(&mut buf as *mut Sector as *mut [u64; 64]) };
    for (i, w) in words.iter_mut().enumerate() {
        *w = pattern_word(lba, i as u64);
    }
    let fail = |phase: u32, e: IdeError| phase << 16 | (e.status as u32) << 8 | e.error as u32;
    if let Err(e) = ide::ide_do_rw_disk(Dir::Write, lba, &mut buf, q.as_deref_mut()) {
        return (fail(1, e), 0);
    }
    buf.0 = [0; 256];
    if let Err(e) = ide::ide_do_rw_disk(Dir::Read, lba, &mut buf, q) {
        return (fail(2, e), 0);
    }
    (0, fnv_words(FNV_INIT, &buf))
}
