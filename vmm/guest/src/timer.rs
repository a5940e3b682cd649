//! Timer path: 8259 PIC, i8254 PIT channel 0, the IDT entry for IRQ0, the ACPI PM timer
//! and the boot-time PM-timer calibration (`verify_pmtmr_rate`, as in Linux).

use crate::io::{inb, inl, outb};
use crate::platform;
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

pub const PIT_HZ: u64 = 1_193_182;
pub const PM_HZ: u64 = 3_579_545;
pub const PM_MASK: u32 = 0x00ff_ffff;
/// The rate the guest programs, as a 2.6-era Linux with HZ=1000 did.
pub const GUEST_HZ: u64 = 1000;
pub const PIT_RELOAD: u16 = ((PIT_HZ + GUEST_HZ / 2) / GUEST_HZ) as u16;
pub const TIMER_VECTOR: u8 = 0x20;

pub static TICKS: AtomicU64 = AtomicU64::new(0);

/// ICW1..ICW4 on the master PIC (vector base 0x20), then mask every line.
pub fn pic_init() {
    outb(0x20, 0x11);
    outb(0x21, TIMER_VECTOR);
    outb(0x21, 0x04);
    outb(0x21, 0x01);
    outb(0x21, 0xff);
}

pub fn pic_set_mask(mask: u8) {
    outb(0x21, mask);
}

/// Channel 0, LSB then MSB, mode 2 (rate generator) at GUEST_HZ.
pub fn pit_init() {
    outb(0x43, 0x34);
    outb(0x40, PIT_RELOAD as u8);
    outb(0x40, (PIT_RELOAD >> 8) as u8);
}

/// Channel 2 free-running (mode 2, count 0 = 65536) for calibration: unlike channel 0's
/// 1 ms period, its 55 ms wrap survives the vCPU thread being descheduled for a while.
pub fn pit_start_channel2() {
    outb(0x43, 0xb4);
    outb(0x42, 0);
    outb(0x42, 0);
}

/// Latches and reads channel 2's current count.
#[inline(always)]
pub fn pit_read_channel2() -> u16 {
    outb(0x43, 0x80);
    let lo = inb(0x42) as u16;
    let hi = inb(0x42) as u16;
    lo | hi << 8
}

#[inline(always)]
pub fn pm_read() -> u32 {
    inl(platform::pmtmr_port()) & PM_MASK
}

/// The EOI routine: a non-specific EOI to the master PIC.
#[inline(never)]
#[no_mangle]
pub extern "C" fn ack_irq() {
    outb(0x20, 0x20);
}

/// IRQ0 handler body, called from the assembly entry `timer_isr_entry`.
#[inline(never)]
#[no_mangle]
pub extern "C" fn timer_interrupt() {
    TICKS.fetch_add(1, Ordering::Relaxed);
    ack_irq();
}

/// Defines `$entry`, an interrupt entry for [`idt_set_gate`](crate::timer::idt_set_gate)
/// that calls the `#[no_mangle] extern "C"` function `$handler` and returns with `iretq`,
/// saving the caller-saved registers around the call (the interrupted code still needs
/// them). On entry the CPU has pushed 5 qwords onto a 16-byte aligned stack; 9 pushes make
/// the call site aligned again.
#[macro_export]
macro_rules! isr_entry {
    ($entry:ident => $handler:ident) => {
        core::arch::global_asm!(
            concat!(".global ", stringify!($entry)),
            concat!(".type ", stringify!($entry), ", @function"),
            concat!(stringify!($entry), ":"),
            "push rax", "push rcx", "push rdx", "push rsi", "push rdi",
            "push r8", "push r9", "push r10", "push r11",
            concat!("call ", stringify!($handler)),
            "pop r11", "pop r10", "pop r9", "pop r8",
            "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rax",
            "iretq",
            concat!(".size ", stringify!($entry), ", . - ", stringify!($entry)),
        );

        extern "C" {
            fn $entry();
        }
    };
}

isr_entry!(timer_isr_entry => timer_interrupt);

#[repr(C, align(16))]
struct Idt([u64; 512]);
static mut IDT: Idt = Idt([0; 512]);

/// Installs the IRQ0 gate and loads the IDT; every other vector stays not-present (until
/// [`idt_set_gate`] fills one), so any exception ends in a triple fault that tinyvmm reports.
pub fn idt_init() {
    idt_set_gate(TIMER_VECTOR, timer_isr_entry as *const () as u64);
    let idt = &raw const IDT;
    let desc: [u16; 5] = [
        (256 * 16 - 1) as u16,
        idt as u64 as u16,
        (idt as u64 >> 16) as u16,
        (idt as u64 >> 32) as u16,
        (idt as u64 >> 48) as u16,
    ];
    // SAFETY: `lidt` reads the 10-byte descriptor from `desc` (alive across the asm) and
    // loads a table that is a static, so it stays valid for the rest of the run.
    unsafe { asm!("lidt [{0}]", in(reg) desc.as_ptr(), options(readonly, nostack)) };
}

/// Points `vector` at `handler` (an assembly entry ending in `iretq`) with an interrupt
/// gate (IF cleared on entry). Call it with interrupts off.
pub fn idt_set_gate(vector: u8, handler: u64) {
    let cs: u16;
    // SAFETY: reads the CS selector into a register; no memory, stack or flags touched.
    unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack)) };
    let lo = (handler & 0xffff) | (cs as u64) << 16 | 0x8e00u64 << 32 | (handler >> 16 & 0xffff) << 48;
    let hi = handler >> 32;
    // SAFETY: IDT is written only here, with interrupts off, on the only vCPU, through a
    // raw pointer (no reference to the static mut is made); the index is in bounds (a u8
    // vector times 2, plus 1, of 512 entries).
    unsafe {
        let idt = &raw mut IDT;
        (*idt).0[vector as usize * 2] = lo;
        (*idt).0[vector as usize * 2 + 1] = hi;
    }
}

/// Result of the PM-timer calibration.
#[derive(Clone, Copy, Default)]
pub struct Calibration {
    pub pm_delta: u64,
    #[allow(dead_code)]
    pub pit_ticks: u64,
    pub expected: u64,
    pub ok: bool,
    pub reads: u64,
}

const CALIBRATE_MS: u64 = 50;

/// Counts PIT channel-2 ticks for 50 ms while reading the PM timer, and checks the PM
/// timer's delta is within 5% of what its 3.579545 MHz rate predicts (Linux's
/// `verify_pmtmr_rate`). Every iteration is four exits (PIT latch + 2 counter reads, PM
/// read): the boot-time hot spot the paper found.
#[inline(never)]
#[no_mangle]
pub fn verify_pmtmr_rate() -> Calibration {
    pit_start_channel2();
    let mut last = pit_read_channel2();
    let pm_start = pm_read();
    let mut pit_ticks = 0u64;
    let mut reads = 0u64;
    let mut pm_end = pm_start;
    while pit_ticks < PIT_HZ * CALIBRATE_MS / 1000 {
        let c = pit_read_channel2();
        pm_end = pm_read();
        pit_ticks += u64::from(last.wrapping_sub(c));
        last = c;
        reads += 1;
    }
    let pm_delta = (pm_end.wrapping_sub(pm_start) & PM_MASK) as u64;
    let expected = PM_HZ * pit_ticks / PIT_HZ;
    let ok = pm_delta * 20 >= expected * 19 && pm_delta * 20 <= expected * 21;
    Calibration { pm_delta, pit_ticks, expected, ok, reads }
}

pub struct TimerResult {
    pub ticks: u64,
    pub pm_ticks: u64,
}

/// Halts with IRQ0 unmasked for `seconds` of PM-timer time, counting ticks.
/// Per tick: HLT exit, EOI (0x20) in `ack_irq`, one PM-timer read here.
#[inline(never)]
pub fn timer_workload(seconds: u64) -> TimerResult {
    TICKS.store(0, Ordering::Relaxed);
    let target = seconds.saturating_mul(PM_HZ);
    pic_set_mask(0xfe);
    let mut last = pm_read();
    let mut elapsed = 0u64;
    // SAFETY: enables interrupts: the IDT has IRQ0's gate (idt_init), whose handler saves
    // the registers it uses and only bumps TICKS (an atomic) and writes the EOI.
    unsafe { asm!("sti", options(nomem, nostack)) };
    while elapsed < target {
        // SAFETY: waits for the next interrupt (IRQ0 is unmasked, IF set); no memory effect
        // on Rust's state beyond what the ISR does atomically.
        unsafe { asm!("hlt", options(nomem, nostack)) };
        let now = pm_read();
        elapsed += (now.wrapping_sub(last) & PM_MASK) as u64;
        last = now;
    }
    // SAFETY: disables interrupts; no memory, stack effect.
    unsafe { asm!("cli", options(nomem, nostack)) };
    pic_set_mask(0xff);
    TimerResult { ticks: TICKS.load(Ordering::Relaxed), pm_ticks: elapsed }
}
