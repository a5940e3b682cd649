//! What differs between the two VMMs the guest runs on, decided once at boot: the exit port,
//! the ACPI PM timer's port, whether the console polls the UART before each byte. tinyvmm's
//! values are the defaults, so its boot path (`kmain`) sets nothing here.

use crate::abi::{PORT_EXIT, PORT_PMTMR};
use core::sync::atomic::{AtomicBool, AtomicU16, Ordering};

static EXIT_PORT: AtomicU16 = AtomicU16::new(PORT_EXIT);
static PMTMR_PORT: AtomicU16 = AtomicU16::new(PORT_PMTMR);
static POLL_LSR: AtomicBool = AtomicBool::new(false);

/// Where `guest_exit` writes its status: tinyvmm's exit port, or QEMU's `isa-debug-exit`.
#[inline(always)]
pub fn exit_port() -> u16 {
    EXIT_PORT.load(Ordering::Relaxed)
}

#[inline(always)]
pub fn pmtmr_port() -> u16 {
    PMTMR_PORT.load(Ordering::Relaxed)
}

/// QEMU's 16550 drops a byte written while the previous one is still in THR; tinyvmm's
/// never backs up, so only the QEMU path waits for THRE.
#[inline(always)]
pub fn poll_lsr() -> bool {
    POLL_LSR.load(Ordering::Relaxed)
}

pub fn set_exit_port(p: u16) {
    EXIT_PORT.store(p, Ordering::Relaxed);
}

pub fn set_pmtmr_port(p: u16) {
    PMTMR_PORT.store(p, Ordering::Relaxed);
}

pub fn set_poll_lsr(on: bool) {
    POLL_LSR.store(on, Ordering::Relaxed);
}
