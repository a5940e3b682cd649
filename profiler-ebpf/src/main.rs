//! kvmprof's eBPF programs. Each KVM tracepoint feeds the per-thread state machine of
//! `profiler_common::ThreadState`; finished exits are aggregated in `EXITS` and, when asked,
//! streamed through `RECORDS`.
//!
//! Two exit sources (the loader attaches one set):
//! - hw: `kvm_exit` + `kvm_entry`, with `kvm_pio`/`kvm_mmio` adding the port or address;
//! - emulated (PVM, where `kvm_exit` never fires): `kvm_emulate_insn` gives the RIP,
//!   `kvm_pio`/`kvm_mmio`/`kvm_userspace_exit` the exit, `kvm_fpu` load the re-entry.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TracePointContext,
};
use profiler_common::{
    counter, detail, maps, mmio_type, ExitKey, ExitRecord, ExitStats, Thread, ThreadState,
};

// Read-only globals, set by the loader (`EbpfLoader::set_global`); the values here are only
// placeholders. Being constants at load time, the verifier prunes the branches they switch off.
#[no_mangle]
static TARGET_TGID: u32 = 0;
#[no_mangle]
static STREAM_RECORDS: u8 = 0;
#[no_mangle]
static HW_SOURCE: u8 = 0;
// Tracepoint field offsets from the running kernel's format files.
#[no_mangle]
static EMULATE_INSN_RIP: u32 = 0;
#[no_mangle]
static EMULATE_INSN_CSBASE: u32 = 0;
#[no_mangle]
static EMULATE_INSN_FAILED: u32 = 0;
#[no_mangle]
static PIO_RW: u32 = 0;
#[no_mangle]
static PIO_PORT: u32 = 0;
#[no_mangle]
static MMIO_TYPE: u32 = 0;
#[no_mangle]
static MMIO_GPA: u32 = 0;
#[no_mangle]
static USERSPACE_EXIT_REASON: u32 = 0;
#[no_mangle]
static FPU_LOAD: u32 = 0;
#[no_mangle]
static EXIT_REASON: u32 = 0;
#[no_mangle]
static EXIT_GUEST_RIP: u32 = 0;
#[no_mangle]
static EXIT_ISA: u32 = 0;
#[no_mangle]
static EXIT_VCPU_ID: u32 = 0;

#[map]
static EXITS: PerCpuHashMap<ExitKey, ExitStats> =
    PerCpuHashMap::with_max_entries(maps::EXITS_MAX_ENTRIES, 0);
#[map]
static THREADS: HashMap<u32, ThreadState> = HashMap::with_max_entries(maps::THREADS_MAX_ENTRIES, 0);
#[map]
static RECORDS: RingBuf = RingBuf::with_byte_size(maps::RECORDS_BYTES, 0);
/// One scratch `ExitStats` per CPU: too big (272 bytes) for the 512-byte BPF stack.
#[map]
static SCRATCH: PerCpuArray<ExitStats> = PerCpuArray::with_max_entries(1, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[inline(always)]
fn global<T: Copy>(g: &'static T) -> T {
    // Volatile, so the compiler keeps the load and the loader's value is used.
    unsafe { core::ptr::read_volatile(g) }
}

#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: &'static u32) -> Option<T> {
    unsafe { ctx.read_at::<T>(global(offset) as usize).ok() }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        unsafe { *c += 1 };
    }
}

/// The calling thread, if it belongs to the traced process.
#[inline(always)]
fn traced_thread() -> Option<Thread> {
    let id = bpf_get_current_pid_tgid();
    let t = Thread { tgid: (id >> 32) as u32, tid: id as u32 };
    let target = global(&TARGET_TGID);
    if target != 0 && t.tgid != target {
        return None;
    }
    Some(t)
}

/// The thread's state, created on its first event.
#[inline(always)]
fn thread_state(t: &Thread) -> Option<&'static mut ThreadState> {
    if let Some(s) = THREADS.get_ptr_mut(t.tid) {
        return Some(unsafe { &mut *s });
    }
    let fresh = ThreadState { comm: bpf_get_current_comm().unwrap_or([0; 16]), tgid: t.tgid, ..ThreadState::default() };
    if THREADS.insert(t.tid, fresh, 0).is_err() {
        bump(counter::THREADS_FULL);
        return None;
    }
    THREADS.get_ptr_mut(t.tid).map(|s| unsafe { &mut *s })
}

/// Aggregates one finished exit and, when asked, streams it.
#[inline(always)]
fn charge(rec: Option<ExitRecord>) {
    let Some(rec) = rec else { return };
    match EXITS.get_ptr_mut(rec.key) {
        Some(stats) => unsafe { (*stats).add(rec.duration_ns) },
        None => {
            let Some(stats) = SCRATCH.get_ptr_mut(0) else { return };
            let stats = unsafe { &mut *stats };
            *stats = ExitStats::default();
            stats.add(rec.duration_ns);
            // BPF_NOEXIST: another CPU may have inserted the key meanwhile; its per-CPU slot
            // is separate, so retry the lookup rather than overwrite.
            if EXITS.insert(rec.key, &*stats, 1).is_err() {
                match EXITS.get_ptr_mut(rec.key) {
                    Some(s) => unsafe { (*s).add(rec.duration_ns) },
                    None => bump(counter::EXIT_KEYS_FULL),
                }
            }
        }
    }
    if global(&STREAM_RECORDS) != 0 {
        match RECORDS.reserve::<ExitRecord>(0) {
            Some(mut slot) => {
                slot.write(rec);
                slot.submit(0);
            }
            None => bump(counter::RECORDS_DROPPED),
        }
    }
}

fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

// ---- emulated source ----

#[tracepoint]
pub fn kvm_emulate_insn(ctx: TracePointContext) -> u32 {
    let Some(t) = traced_thread() else { return 0 };
    // The same tracepoint fires again with failed=1 for an instruction that could not be
    // emulated; the instruction was already seen.
    if field::<u8>(&ctx, &EMULATE_INSN_FAILED).unwrap_or(0) != 0 {
        return 0;
    }
    let rip = field::<u64>(&ctx, &EMULATE_INSN_RIP).unwrap_or(0);
    let csbase = field::<u32>(&ctx, &EMULATE_INSN_CSBASE).unwrap_or(0) as u64;
    if let Some(s) = thread_state(&t) {
        charge(s.on_emulated_insn(now(), csbase.wrapping_add(rip)));
    }
    0
}

#[tracepoint]
pub fn kvm_pio(ctx: TracePointContext) -> u32 {
    let Some(t) = traced_thread() else { return 0 };
    let write = field::<u32>(&ctx, &PIO_RW).unwrap_or(0) != 0;
    let port = field::<u32>(&ctx, &PIO_PORT).unwrap_or(0) as u64;
    let kind = if write { detail::PORT_OUT } else { detail::PORT_IN };
    access(t, kind, port);
    0
}

#[tracepoint]
pub fn kvm_mmio(ctx: TracePointContext) -> u32 {
    let Some(t) = traced_thread() else { return 0 };
    let kind = match field::<u32>(&ctx, &MMIO_TYPE).unwrap_or(0) {
        mmio_type::WRITE => detail::MMIO_WRITE,
        _ => detail::MMIO_READ,
    };
    let gpa = field::<u64>(&ctx, &MMIO_GPA).unwrap_or(0);
    access(t, kind, gpa);
    0
}

#[inline(always)]
fn access(t: Thread, kind: u8, addr: u64) {
    let Some(s) = thread_state(&t) else { return };
    if global(&HW_SOURCE) != 0 {
        s.on_hw_detail(kind, addr);
    } else {
        charge(s.on_emulated_access(now(), t, kind, addr));
    }
}

#[tracepoint]
pub fn kvm_userspace_exit(ctx: TracePointContext) -> u32 {
    let Some(t) = traced_thread() else { return 0 };
    let reason = field::<u32>(&ctx, &USERSPACE_EXIT_REASON).unwrap_or(0);
    if let Some(s) = thread_state(&t) {
        charge(s.on_userspace_exit(now(), t, reason));
    }
    0
}

#[tracepoint]
pub fn kvm_fpu(ctx: TracePointContext) -> u32 {
    let Some(t) = traced_thread() else { return 0 };
    if field::<u32>(&ctx, &FPU_LOAD).unwrap_or(0) == 0 {
        return 0;
    }
    if let Some(s) = THREADS.get_ptr_mut(t.tid) {
        unsafe { (*s).on_run_entry(now()) };
    }
    0
}

// ---- hw source ----

#[tracepoint]
pub fn kvm_exit(ctx: TracePointContext) -> u32 {
    let Some(t) = traced_thread() else { return 0 };
    let reason = field::<u32>(&ctx, &EXIT_REASON).unwrap_or(0);
    let rip = field::<u64>(&ctx, &EXIT_GUEST_RIP).unwrap_or(0);
    let isa = field::<u32>(&ctx, &EXIT_ISA).unwrap_or(0) as u8;
    let vcpu = field::<u32>(&ctx, &EXIT_VCPU_ID).unwrap_or(0);
    if let Some(s) = thread_state(&t) {
        charge(s.on_hw_exit(now(), t, vcpu, isa, reason, rip));
    }
    0
}

#[tracepoint]
pub fn kvm_entry(_ctx: TracePointContext) -> u32 {
    let Some(t) = traced_thread() else { return 0 };
    if let Some(s) = THREADS.get_ptr_mut(t.tid) {
        charge(unsafe { (*s).on_hw_entry(now()) });
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
