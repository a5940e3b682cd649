//! Reads of kernel memory (`struct kvm_vcpu`, its emulator context, its `kvm_run`) at the
//! addresses the tracepoints hand over.
//!
//! Two ways, chosen at load time by `DIRECT_READS` (profiler_common::globals::DIRECT_READS):
//! - direct (1): the address is cast with the kfunc `bpf_rdonly_cast(addr, 0)` to read-only
//!   untrusted memory, and then read with plain loads. The verifier turns the cast into a
//!   register move and the loads into BPF_PROBE_MEM loads: the JIT guards each with an
//!   exception-table entry, so a bad address reads as 0 instead of faulting. No helper call:
//!   a `bpf_probe_read_kernel` costs ~64 ns per call here, a load next to nothing
//!   (`examples/bpf_floor.rs`).
//! - helper (0): `bpf_probe_read_kernel`, for kernels whose verifier cannot cast to `void`
//!   (the daemon probes that before loading, see `live::kfunc`).
//!
//! Rust has no way to name a kfunc, and aya resolves none. So the cast is an inline-asm helper
//! call with a placeholder number (profiler_common::kfunc::RDONLY_CAST_PLACEHOLDER), which the
//! daemon rewrites, in the object's code before loading it, into the kfunc call with this
//! kernel's BTF id of `bpf_rdonly_cast` (or into a plain move when direct reads are off: the
//! verifier prunes that branch then, but no unknown helper number is left in the program).
use core::ffi::c_void;
use core::mem::{size_of, MaybeUninit};

use aya_ebpf::{helpers::generated, Global};
use profiler_common::kfunc::RDONLY_CAST_PLACEHOLDER;

/// profiler_common::globals::DIRECT_READS.
#[no_mangle]
static DIRECT_READS: Global<u8> = Global::new(0);

/// `addr` as read-only untrusted memory, for the verifier; the same number at run time.
#[inline(always)]
fn untrusted(addr: u64) -> u64 {
    let out: u64;
    // SAFETY: after the daemon's rewrite this is `r0 = bpf_rdonly_cast(r1, 0)`, which the
    // verifier inlines as `r0 = r1`: no memory is touched. The kfunc calling convention
    // clobbers r1-r5 and returns in r0, as declared.
    unsafe {
        core::arch::asm!(
            "call {placeholder}",
            placeholder = const RDONLY_CAST_PLACEHOLDER,
            inlateout("r1") addr => _,
            inlateout("r2") 0u64 => _,
            lateout("r0") out,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
            options(nostack, nomem, pure),
        );
    }
    out
}

/// The `T` at `offset` bytes from kernel address `base`, or zeros where that cannot be read,
/// in both modes: the JIT's fixup zeroes a faulting direct load, and the helper zero-fills its
/// destination when it fails. Every caller takes zeros as "unknown" (a null pointer, no RIP,
/// no exit reason). No `Option`: a `None` leaves its payload undefined, and the compiler may
/// then spill a register the verifier sees as never written.
///
/// The base is cast before the offset is added: `base` may be a classic tracepoint's context,
/// which the verifier lets no program move, but the cast's result it does.
#[inline(always)]
pub fn read<T: Copy>(base: u64, offset: u64) -> T {
    if DIRECT_READS.load() != 0 {
        let p = untrusted(base).wrapping_add(offset) as *const T;
        // SAFETY: a BPF_PROBE_MEM load (see the module comment): the JIT's exception table
        // turns a fault into zeros, so any address is sound to read this way.
        unsafe { core::ptr::read_volatile(p) }
    } else {
        // Not zeroed first: that took a byte-loop memset call per read, and the helper writes
        // every byte either way.
        let mut out = MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes all size_of::<T>() bytes of `out`: the data, or zeros when
        // the read fails (it never faults). T is plain integers, for which any bytes are valid.
        unsafe {
            generated::bpf_probe_read_kernel(out.as_mut_ptr().cast(), size_of::<T>() as u32, base.wrapping_add(offset) as *const c_void);
            out.assume_init()
        }
    }
}
