//! Guest stack walking at the exit (`record --stack-depth N`, N > 1): up to N return
//! addresses, by the guest's unwind table (`UNWIND`, loaded by the daemon at record time,
//! searched with profiler_common::unwind::find) and by the frame pointer where no rule covers
//! an address. The walk itself is profiler_common::unwind::walk, the code the unit tests run.
//!
//! Guest memory is read exactly as `caller_of` reads it: the guest's page tables walked with
//! its CR3 (profiler_common::guest::translate), guest-physical mapped to the VMM's address
//! space by `GUEST_MEMORY`, and `bpf_probe_read_user` in the VMM's mm. A stack lies on one or
//! two pages, so the walk keeps the last page's translation and reads most slots with one
//! probe read.
//!
//! The stack goes into `STACKS` under its id (profiler_common::unwind::stack_id), and the
//! exit's key gets the id and, as its caller, the first return address. With the default
//! depth of 1, `STACK_DEPTH` (a read-only global) makes `enabled()` a load-time constant and
//! the verifier prunes all of this away.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_probe_read_user,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    Global,
};
use profiler_common::{
    counter,
    guest,
    maps,
    unwind::{self, Frame, GuestStack, UnwindEntry},
    Thread, ThreadState, REGS_AVAIL_RSP, UNKNOWN_CALLER,
};

use crate::{bump, frame_registers, thread_vcpu, vcpu_field, GUEST_MEMORY, GUEST_MEMORY_USED};
use crate::{VCPU_REGS_AVAIL, VCPU_RSP};

/// profiler_common::globals::STACK_DEPTH.
#[no_mangle]
static STACK_DEPTH: Global<u32> = Global::new(1);
/// profiler_common::globals::UNWIND_LEN.
#[no_mangle]
static UNWIND_LEN: Global<u32> = Global::new(0);

/// Resized by the loader to the table's length (maps::UNWIND).
#[map]
static UNWIND: Array<UnwindEntry> = Array::with_max_entries(1, 0);
#[map]
static STACKS: HashMap<u32, GuestStack> = HashMap::with_max_entries(maps::STACKS_MAX_ENTRIES, 0);
#[map]
static STACK_SCRATCH: PerCpuArray<GuestStack> = PerCpuArray::with_max_entries(1, 0);
/// One 0 that the verifier cannot know (a writable map's value): or-ed into each index the
/// binary search reads, so the index is not a constant to the verifier. It then needs no
/// precise value for it, and merges the two sides of every comparison of the search instead
/// of following 2^steps paths (measured: the 1M-instruction limit hit with 2^20 entries).
#[map]
static STACK_OPAQUE: Array<u32> = Array::with_max_entries(1, 0);

/// True when stacks are walked: `--stack-depth` above 1 (a load-time constant, so with depth 1
/// nothing below is even loaded) and the unwind table at its runtime addresses
/// (maps::control::STACKS_READY: with a KASLR slide still to be found from the first exits,
/// those exits get their caller only).
#[inline(always)]
pub fn enabled() -> bool {
    STACK_DEPTH.load() > 1 && crate::CONTROL.get(maps::control::STACKS_READY).copied() == Some(1)
}

/// Walks the stack of the exit pending in `s` and puts its id and caller in the exit's key
/// (caller unknown and no stack when nothing could be read).
#[inline(always)]
pub fn attribute_stack(s: &mut ThreadState, t: &Thread) {
    let vcpu = thread_vcpu(s, t);
    s.pending.key.caller = UNKNOWN_CALLER;
    s.pending.key.stack = 0;
    if vcpu == 0 || GUEST_MEMORY_USED.get(0).copied() != Some(1) {
        return;
    }
    // SAFETY: as in `caller_of`: a torn GUEST_MEMORY value only yields wrong addresses for
    // bpf_probe_read_user, which cannot fault.
    let Some(mem) = (unsafe { GUEST_MEMORY.get(t.tgid) }) else { return };
    let (rbp, paging) = frame_registers(vcpu);
    // RSP only when KVM says regs[RSP] is current (see `caller_of`); without it the walk
    // starts by the frame pointer.
    let avail = vcpu_field(vcpu, &VCPU_REGS_AVAIL) as u32;
    let rsp = if avail & REGS_AVAIL_RSP != 0 { vcpu_field(vcpu, &VCPU_RSP) } else { 0 };
    let Some(out) = STACK_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: a non-null pointer to this CPU's scratch slot: one writer (see main.rs).
    let out = unsafe { &mut *out };
    let read_phys = |gpa: u64| -> Option<u64> {
        let hva = mem.host_addr(gpa, 8)?;
        // SAFETY: a probe read of the VMM's memory (the current mm); a bad or unmapped
        // address makes the helper fail, it cannot fault.
        unsafe { bpf_probe_read_user(hva as *const u64).ok() }
    };
    // The last page translated: most slots of a stack lie on one page.
    let mut page = u64::MAX;
    let mut page_gpa = 0u64;
    let read = |gva: u64| -> Option<u64> {
        if gva & 7 != 0 {
            return None; // a u64 slot never straddles a page
        }
        if gva & !0xfff != page {
            page_gpa = guest::translate(&paging, gva & !0xfff, read_phys)?;
            page = gva & !0xfff;
        }
        read_phys(page_gpa | (gva & 0xfff))
    };
    let opaque = STACK_OPAQUE.get(0).copied().unwrap_or(0);
    let entry = |i: u32| UNWIND.get(i | opaque).copied();
    let leaf = Frame { ip: s.pending.key.rip, sp: rsp, bp: rbp };
    if unwind::walk(leaf, STACK_DEPTH.load(), UNWIND_LEN.load(), entry, read, out) == 0 {
        return;
    }
    s.pending.key.caller = out.frames[0];
    let id = unwind::stack_id(out);
    // Usually the stack is there already: one lookup. A new one is inserted with BPF_NOEXIST
    // (of two CPUs inserting it at once, one wins; the other finds it).
    if STACKS.get_ptr(&id).is_some() || STACKS.insert(&id, out, BPF_NOEXIST as u64).is_ok() || STACKS.get_ptr(&id).is_some() {
        s.pending.key.stack = id;
    } else {
        bump(counter::STACKS_FULL);
    }
}
