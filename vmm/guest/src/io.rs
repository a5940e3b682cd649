//! Port I/O. These helpers are `#[inline(always)]`, so every `in`/`out` instruction sits in
//! the function that calls them (e.g. `ide_do_rw_disk`), exactly as Linux's inlined
//! `outb` does: the RIP of an exit symbolizes to the paper's function names.

use core::arch::asm;

// Every helper below is one `in`/`out` (or `rep ins`/`rep outs`) instruction. They are sound
// for the same reasons: the guest runs at CPL 0 with IOPL irrelevant, so port I/O cannot
// fault; a port access touches no memory Rust can see (hence `nomem`), no stack, and leaves
// the flags alone, except the string forms, which read or write exactly the given slice.

#[inline(always)]
pub fn outb(port: u16, v: u8) {
    // SAFETY: one port write (see the top of this module); only registers are inputs.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags)) }
}
#[inline(always)]
pub fn outw(port: u16, v: u16) {
    // SAFETY: one port write (see the top of this module); only registers are inputs.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags)) }
}
#[inline(always)]
pub fn outl(port: u16, v: u32) {
    // SAFETY: one port write (see the top of this module); only registers are inputs.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags)) }
}
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: one port read (see the top of this module) into a register output.
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags)) }
    v
}
#[inline(always)]
pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: one port read (see the top of this module) into a register output.
    unsafe { asm!("in ax, dx", out("ax") v, in("dx") port, options(nomem, nostack, preserves_flags)) }
    v
}
#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: one port read (see the top of this module) into a register output.
    unsafe { asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags)) }
    v
}

/// `rep outsw`: one exit moves a whole sector (KVM batches string I/O up to a page).
#[inline(always)]
pub fn outsw(port: u16, buf: &[u16]) {
    // SAFETY: `cld` makes `rep outsw` walk forward from RSI = buf's start for RCX =
    // buf.len() words, so it reads exactly `buf`, a valid shared slice (`readonly`); RSI,
    // RCX and the flags it changes are declared clobbered.
    unsafe {
        asm!("cld", "rep outsw", in("dx") port, inout("rsi") buf.as_ptr() => _,
             inout("rcx") buf.len() => _, options(nostack, readonly))
    }
}

/// `rep insw`: the read counterpart of [`outsw`].
#[inline(always)]
pub fn insw(port: u16, buf: &mut [u16]) {
    // SAFETY: `cld` makes `rep insw` walk forward from RDI = buf's start for RCX =
    // buf.len() words, so it writes exactly `buf`, which we borrow mutably (any u16 is
    // valid); RDI, RCX and the flags are declared clobbered.
    unsafe {
        asm!("cld", "rep insw", in("dx") port, inout("rdi") buf.as_mut_ptr() => _,
             inout("rcx") buf.len() => _, options(nostack))
    }
}
