//! tinyvmm's bundled guest: a `no_std` kernel whose functions carry the names of the
//! Linux functions the paper found hot (`ide_do_rw_disk`, `timer_interrupt`, `ack_irq`,
//! `verify_pmtmr_rate`). tinyvmm enters `_start` in 64-bit mode with RDI pointing at a
//! `BootParams` that selects the workload; the guest reports one `@@result {json}` line
//! on COM1 and writes its exit status to port 0x501. Under QEMU it boots through the PVH
//! note instead (`pvh.rs`), with the workload on the kernel command line (`cmdline.rs`).
#![no_std]
#![no_main]

mod abi;
mod batch;
mod chaos;
mod cmdline;
mod ide;
mod io;
mod net;
mod platform;
mod pvh;
mod serial;
mod timer;
mod workloads;

use abi::*;
use core::arch::global_asm;

global_asm!(
    ".section .text.boot, \"ax\"",
    ".global _start",
    ".type _start, @function",
    "_start:",
    "lea rsp, [rip + __stack_top]",
    "xor ebp, ebp",
    "call kmain",
    "2: hlt",
    "jmp 2b",
    ".size _start, . - _start",
    ".section .bss.stack, \"aw\", @nobits",
    ".balign 16",
    ".space 65536",
    "__stack_top:",
);

/// Writes the guest's exit status; tinyvmm stops the VM on it (QEMU: `isa-debug-exit`).
pub fn guest_exit(status: u8) -> ! {
    io::outb(platform::exit_port(), status);
    loop {
        // SAFETY: `cli; hlt` at CPL 0 only stops this vCPU (tinyvmm has already ended the
        // run on the exit port); it touches no memory or stack.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// The Rust entry point, called by `_start` with RDI as tinyvmm set it.
///
/// # Safety
///
/// `params` must point to a readable, aligned [`BootParams`] (tinyvmm puts it at
/// `BOOT_PARAMS_ADDR`, identity-mapped RAM, and passes its address in RDI).
#[no_mangle]
pub unsafe extern "C" fn kmain(params: *const BootParams) -> ! {
    // SAFETY: the caller's contract above; any bit pattern is a valid BootParams (plain
    // integers), and the magic is checked before anything else is trusted.
    let p = unsafe { core::ptr::read_volatile(params) };
    if p.magic != BOOT_PARAMS_MAGIC {
        kprint!("@@result {{\"status\":\"error\",\"error\":\"bad boot params\"}}\n");
        guest_exit(2);
    }
    boot(&p)
}

/// Everything after the boot protocol, the same on tinyvmm and QEMU.
fn boot(p: &BootParams) -> ! {
    timer::pic_init();
    timer::pit_init();
    timer::idt_init();
    let cal = if p.flags & FLAG_SKIP_PMTMR_CALIBRATION == 0 {
        Some(timer::verify_pmtmr_rate())
    } else {
        None
    };
    let status = workloads::run(p, cal);
    guest_exit(status)
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    kprint!("@@result {{\"status\":\"error\",\"error\":\"guest panic\"}}\n");
    guest_exit(3)
}
