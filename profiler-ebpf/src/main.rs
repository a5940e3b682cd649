//! kvmprof's eBPF programs. Each KVM tracepoint feeds the per-thread state machine of
//! `profiler_common::ThreadState`; finished exits are aggregated in `EXIT_STATS` (indexed by `EXIT_INDEX`) and, when asked,
//! streamed through `RECORDS`.
//!
//! Two exit sources (the loader attaches one set):
//! - hw: `kvm_exit` + `kvm_entry`, with `kvm_pio`/`kvm_mmio` adding the port or address;
//! - emulated (PVM, where `kvm_exit` never fires): `kvm_pio`/`kvm_mmio`/`kvm_userspace_exit`
//!   the exit, `kvm_fpu` load the re-entry. The RIP of the exiting instruction is read at the
//!   exit event from the vcpu's instruction-emulator context (`insn_rip`), so nothing runs per
//!   guest instruction except `vcpu_of_insn`, and that only until every vCPU thread's
//!   `struct kvm_vcpu *` is known (then the daemon detaches it).
//!
//! Every program except the hw source's `kvm_exit` is a raw tracepoint: no
//! TP_fast_assign, no perf-buffer record, the TP_PROTO arguments in registers. (The per-exit
//! classic programs cost ~4 x 0.1-0.2 us per exit here.)
//!
//! Caller attribution (the paper's Table 3): when an exit begins, the guest's RBP and paging
//! registers are read from the thread's `struct kvm_vcpu` and the caller's return address
//! (`[RBP + 8]`) from guest memory, through the VMM's own mapping of guest RAM
//! (`bpf_probe_read_user`: the tracepoints run in the vCPU thread, so the VMM's mm is current).
//! It has to happen here, at the exit: a moment later the guest has run on and its stack has
//! changed, so a reader in user space would race. See `caller_of`.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod kernel_read;
mod stack;

use aya_ebpf::{
    bindings::{BPF_F_RDONLY_PROG, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, Queue, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext, Global,
};
use profiler_common::{
    counter, detail, kvm_exit,
    guest::{self, GuestMemMap, Paging},
    maps, mmio_type,
    runs::{RunKey, RunStats},
    CountTime, ExitKey, ExitRecord, ExitStats, RecordBatch, RECORD_BATCH_LEN, Thread, ThreadSlot, ThreadState, KVM_EXIT_IO_OUT, KVM_RUN_EXIT_REASON, KVM_RUN_IMMEDIATE_EXIT, KVM_RUN_IO,
    NO_CS_BASE, NO_OFFSET, REGS_AVAIL_RSP, UNKNOWN_CALLER, X86EMUL_MODE_PROT64,
};

// Read-only globals, set by the loader (`EbpfLoader::override_global`, names from
// profiler_common::{globals, FIELD_GLOBALS, VCPU_GLOBALS, EMULATOR_GLOBALS, VCPU_CS_BASE});
// the values here are only placeholders. aya's `Global` reads them with a volatile load, so
// the compiler cannot fold the placeholder in; being constants at load time, the verifier
// prunes the branches they switch off. `#[no_mangle]` keeps the symbol names the loader uses.
#[no_mangle]
static TARGET_TGID: Global<u32> = Global::new(0);
#[no_mangle]
static STREAM_RECORDS: Global<u8> = Global::new(0);
#[no_mangle]
static HW_SOURCE: Global<u8> = Global::new(0);
/// profiler_common::globals::MAX_GAP_NS (run detection).
#[no_mangle]
static MAX_GAP_NS: Global<u64> = Global::new(0);
// Tracepoint field offsets from the running kernel's format files (classic kvm_exit only).
#[no_mangle]
static EXIT_REASON: Global<u32> = Global::new(0);
#[no_mangle]
static EXIT_GUEST_RIP: Global<u32> = Global::new(0);
#[no_mangle]
static EXIT_ISA: Global<u32> = Global::new(0);
#[no_mangle]
static EXIT_VCPU_ID: Global<u32> = Global::new(0);
// `struct kvm_vcpu` offsets from the running kernel's BTF (profiler_common::VCPU_GLOBALS).
#[no_mangle]
static VCPU_RSP: Global<u32> = Global::new(0);
#[no_mangle]
static VCPU_RBP: Global<u32> = Global::new(0);
#[no_mangle]
static VCPU_REGS_AVAIL: Global<u32> = Global::new(0);
#[no_mangle]
static VCPU_CR0: Global<u32> = Global::new(0);
#[no_mangle]
static VCPU_CR3: Global<u32> = Global::new(0);
#[no_mangle]
static VCPU_CR4: Global<u32> = Global::new(0);
#[no_mangle]
static VCPU_EFER: Global<u32> = Global::new(0);
#[no_mangle]
static VCPU_EMULATE_CTXT: Global<u32> = Global::new(0);
/// profiler_common::VCPU_RUN: `struct kvm_vcpu::run`.
#[no_mangle]
static VCPU_RUN: Global<u32> = Global::new(0);
/// profiler_common::VCPU_WANTS_TO_RUN: `struct kvm_vcpu::wants_to_run`, or NO_OFFSET.
#[no_mangle]
static VCPU_WANTS_TO_RUN: Global<u32> = Global::new(0);
// `struct x86_emulate_ctxt` offsets from BTF (profiler_common::EMULATOR_GLOBALS).
#[no_mangle]
static CTXT_EIP: Global<u32> = Global::new(0);
#[no_mangle]
static CTXT_START_EIP: Global<u32> = Global::new(0);
#[no_mangle]
static CTXT_MODE: Global<u32> = Global::new(0);
#[no_mangle]
static CTXT_FETCH_PTR: Global<u32> = Global::new(0);
#[no_mangle]
static CTXT_FETCH_DATA: Global<u32> = Global::new(0);
/// profiler_common::VCPU_CS_BASE: PVM's cached CS base in the vcpu, or NO_CS_BASE.
#[no_mangle]
static VCPU_CS_BASE: Global<u32> = Global::new(0);

/// Indexes: profiler_common::maps::control.
#[map]
static CONTROL: Array<u32> = Array::with_max_entries(maps::control::COUNT, 0);
/// Exit key -> its index in EXIT_STATS (see maps::EXIT_INDEX).
#[map]
static EXIT_INDEX: HashMap<ExitKey, u64> = HashMap::with_max_entries(maps::EXITS_MAX_ENTRIES, 0);
/// The stats of each exit key, per CPU, at its EXIT_INDEX index.
#[map]
static EXIT_STATS: PerCpuArray<ExitStats> = PerCpuArray::with_max_entries(maps::EXITS_MAX_ENTRIES, 0);
/// The EXIT_STATS indexes no key has (filled by the daemon).
#[map]
static FREE_EXIT_INDEXES: Queue<u64> = Queue::with_max_entries(maps::EXITS_MAX_ENTRIES, 0);
/// Exits of keys that found no free `EXIT_STATS` index: count and time only (see maps::EXITS_OVERFLOW).
#[map]
static EXITS_OVERFLOW: PerCpuHashMap<ExitKey, CountTime> =
    PerCpuHashMap::with_max_entries(maps::EXITS_OVERFLOW_MAX_ENTRIES, 0);
#[map]
static THREADS: HashMap<u32, ThreadState> = HashMap::with_max_entries(maps::THREADS_MAX_ENTRIES, 0);
/// Thread states by `tid % THREAD_SLOTS_MAX_ENTRIES` (see maps::THREAD_SLOTS).
#[map]
static THREAD_SLOTS: Array<ThreadSlot> = Array::with_max_entries(maps::THREAD_SLOTS_MAX_ENTRIES, 0);
#[map]
static SLOT_OWNERS: HashMap<u32, u32> = HashMap::with_max_entries(maps::THREAD_SLOTS_MAX_ENTRIES, 0);
/// The streamed records of each slot's thread, written to RECORDS eight at a time.
#[map]
static RECORD_BATCHES: Array<RecordBatch> = Array::with_max_entries(maps::THREAD_SLOTS_MAX_ENTRIES, 0);
#[map]
static GUEST_MEMORY_USED: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static RECORDS: RingBuf = RingBuf::with_byte_size(maps::RECORDS_BYTES, 0);
/// Runs of successive I/O exits by signature (profiler_common::runs, maps::RUNS).
#[map]
static RUNS: PerCpuHashMap<RunKey, RunStats> = PerCpuHashMap::with_max_entries(maps::RUNS_MAX_ENTRIES, 0);
/// An all-zero `ThreadState`, the initial value of a new THREADS entry: too big for the
/// 512-byte BPF stack, and BPF_F_RDONLY_PROG makes the verifier reject any program store into
/// it, so it stays zero.
#[map]
static ZERO_THREAD: Array<ThreadState> = Array::with_max_entries(1, BPF_F_RDONLY_PROG);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
#[map]
static GUEST_MEMORY: HashMap<u32, GuestMemMap> =
    HashMap::with_max_entries(maps::GUEST_MEMORY_MAX_ENTRIES, 0);

// Why the `&mut` into map values below is sound (referred to as "one writer"): tracepoint
// programs run with preemption disabled and the KVM tracepoints fire only in the task context
// of a vCPU thread, so on one CPU they run one after another, never nested. A per-CPU slot
// therefore has one writer at a time, and so does a thread's state (its THREAD_SLOTS entry or
// THREADS entry), which only programs running in that thread touch. Map value pointers stay valid for the whole program run (RCU), and
// the daemon never deletes entries while recording (it reads them after detaching).

/// A field of a classic tracepoint's record, at its offset from this kernel's format file (0
/// where unreadable; see `kernel_read`).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: &Global<u32>) -> T {
    kernel_read::read::<T>(ctx.as_ptr() as u64, offset.load() as u64)
}

#[inline(always)]
fn bump(index: u32) {
    bump_by(index, 1);
}

#[inline(always)]
fn bump_by(index: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a non-null pointer to this CPU's slot of a per-CPU array: one writer.
        unsafe { *c += n };
    }
}

/// The calling thread, if it belongs to the traced process (and recording is on).
#[inline(always)]
fn traced_thread() -> Option<Thread> {
    if CONTROL.get(maps::control::RECORDING).copied() != Some(1) {
        return None;
    }
    current_traced_thread()
}

/// The traced thread running on each CPU, as its last KVM event found it; tid 0 = unknown.
/// `cpu_switch` clears a CPU's entry at every context switch there, so a set entry always
/// names the task running now: the thread the events of an exit, one after another on one
/// CPU, share without asking the kernel again.
#[repr(C)]
#[derive(Clone, Copy)]
struct CpuThread {
    tid: u32,
    tgid: u32,
}

/// One slot per CPU (see `CpuThread`). A per-CPU array lookup is inlined by the verifier;
/// `bpf_get_current_pid_tgid` is a call, ~25 ns here (measured with an empty program and one
/// with only that call), and the three program runs of every exit each needed one.
#[map]
static CPU_THREAD: PerCpuArray<CpuThread> = PerCpuArray::with_max_entries(1, 0);

/// The calling thread if it belongs to the traced process: from this CPU's `CPU_THREAD` entry
/// when set, else from `bpf_get_current_pid_tgid`, noting a traced thread in the entry.
#[inline(always)]
fn current_traced_thread() -> Option<Thread> {
    let cached = CPU_THREAD.get_ptr_mut(0);
    if let Some(c) = cached {
        // SAFETY: a non-null pointer to this CPU's slot of a per-CPU array: programs on one
        // CPU run one after another (see "one writer"), and `cpu_switch` runs on this CPU too.
        let c = unsafe { *c };
        if c.tid != 0 {
            return Some(Thread { tgid: c.tgid, tid: c.tid });
        }
    }
    let id = bpf_get_current_pid_tgid();
    let t = Thread { tgid: (id >> 32) as u32, tid: id as u32 };
    let target = TARGET_TGID.load();
    if (target != 0 && t.tgid != target) || t.tid == 0 {
        return None;
    }
    if let Some(c) = cached {
        // SAFETY: as above.
        unsafe { *c = CpuThread { tid: t.tid, tgid: t.tgid } };
    }
    Some(t)
}

/// Raw `sched_switch(preempt, prev, next, prev_state)`: another task runs on this CPU from now
/// on, so its `CPU_THREAD` entry no longer names the running task. Attached before, and
/// detached after, every program that reads the entry. It runs at every context switch on
/// the machine (~80 ns each under bpf_stats), a few thousand a second against the ~100 000
/// exits a second of an exit-bound vCPU, each of which it saves three calls.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn cpu_switch(_ctx: RawTracePointContext) -> u32 {
    if let Some(c) = CPU_THREAD.get_ptr_mut(0) {
        // SAFETY: as in `current_traced_thread`.
        unsafe {
            if (*c).tid != 0 {
                (*c).tid = 0;
            }
        }
    }
    0
}

/// The thread's `THREAD_SLOTS` entry and its index.
#[inline(always)]
fn thread_slot(t: &Thread) -> Option<(u32, *mut ThreadSlot)> {
    let index = t.tid % maps::THREAD_SLOTS_MAX_ENTRIES;
    THREAD_SLOTS.get_ptr_mut(index).map(|p| (index, p))
}

/// The thread's state if it has one: its slot (an inlined array lookup), else its `THREADS`
/// entry (a thread whose slot another thread owns).
#[inline(always)]
fn known_thread_state(t: &Thread) -> Option<&'static mut ThreadState> {
    if let Some((_, slot)) = thread_slot(t) {
        // SAFETY: a non-null pointer to an array entry, valid for the program run. Only the
        // thread named by `tid` writes its `state` (one writer); `tid` is written once, by
        // the claim below, or zeroed by the daemon after the thread's process ended.
        // ('static is wider than true; callers keep it only for the current program run.)
        unsafe {
            if (*slot).tid == t.tid {
                return Some(&mut (*slot).state);
            }
        }
    }
    // SAFETY: this thread's entry, non-null, valid for the program run: one writer.
    THREADS.get_ptr_mut(t.tid).map(|s| unsafe { &mut *s })
}

/// The thread's state, created on its first event: in its slot if it can claim it, else in
/// `THREADS`.
#[inline(always)]
fn thread_state(t: &Thread) -> Option<&'static mut ThreadState> {
    if let Some(s) = known_thread_state(t) {
        return Some(s);
    }
    if let Some((index, slot)) = thread_slot(t) {
        // BPF_NOEXIST: of two threads claiming one index at once, exactly one inserts.
        if SLOT_OWNERS.insert(index, t.tid, BPF_NOEXIST as u64).is_ok() {
            // SAFETY: the slot this thread now owns; it is all zeros (never used, or zeroed
            // by the daemon before it deleted the previous owner), so only the name and
            // process are set before `tid` publishes it.
            unsafe {
                (*slot).state.comm = bpf_get_current_comm().unwrap_or([0; 16]);
                (*slot).state.tgid = t.tgid;
                (*slot).tid = t.tid;
                return Some(&mut (*slot).state);
            }
        }
    }
    // A thread whose slot is taken: zeros copied map to map, then its name and process set in place.
    let zero = ZERO_THREAD.get(0)?;
    if THREADS.insert(t.tid, zero, 0).is_err() {
        bump(counter::THREADS_FULL);
        return None;
    }
    // SAFETY: as above, the entry just inserted for this thread.
    let s = THREADS.get_ptr_mut(t.tid).map(|s| unsafe { &mut *s })?;
    s.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    s.tgid = t.tgid;
    Some(s)
}

/// Charges a finished exit of thread state `s` and feeds it to the thread's run detection.
#[inline(always)]
fn charge_exit(s: &mut ThreadState, rec: Option<ExitRecord>) {
    // By reference from here on: each copy of the 64-byte record is 16 more instructions.
    let Some(r) = &rec else { return };
    charge(s, r);
    s.run.on_exit(r, MAX_GAP_NS.load(), add_run);
}

/// Aggregates one finished run (two or more exits) in `RUNS`. `key` and `run` point into the
/// thread's state: a new signature is inserted by copying them map to map.
#[inline(always)]
fn add_run(key: &RunKey, run: &RunStats) {
    let slot = match RUNS.get_ptr_mut(key) {
        Some(p) => Some(p),
        None => {
            // BPF_NOEXIST: another CPU's insert of the same signature wins; this CPU's slot of
            // it is then zero (the kernel zero-fills the other CPUs' slots) and is added to.
            if RUNS.insert(key, run, BPF_NOEXIST as u64).is_ok() {
                return;
            }
            RUNS.get_ptr_mut(key)
        }
    };
    match slot {
        // SAFETY: a non-null pointer to this CPU's slot of a RUNS entry: one writer.
        // (A slot zero-filled by another CPU's insert has no accesses and kind 0: user space
        // takes them from the slot whose kind is set, the inserting CPU's.)
        Some(p) => unsafe {
            (*p).occurrences += 1;
            (*p).total_ns += run.total_ns;
        },
        None => bump(counter::RUNS_FULL),
    }
}

/// Aggregates one finished exit of thread state `s` and, when asked, streams it.
#[inline(always)]
fn charge(s: &mut ThreadState, rec: &ExitRecord) {
    match exit_stats(s, &rec.key) {
        // SAFETY: a non-null pointer to this CPU's slot of an EXIT_STATS entry: one writer.
        Some(stats) => unsafe { (*stats).add(rec.duration_ns) },
        // Every index is taken (EXITS_MAX_ENTRIES keys): count it without a histogram.
        None => charge_overflow(rec),
    }
    if STREAM_RECORDS.load() != 0 {
        stream_record(rec);
    }
}

/// Streams one finished exit: into its thread's `RECORD_BATCHES` entry, which goes through
/// `RECORDS` in one write when full; a thread without a slot writes it at once. A write the
/// ring buffer has no room for counts its records as dropped.
#[inline(always)]
fn stream_record(rec: &ExitRecord) {
    let index = rec.key.tid % maps::THREAD_SLOTS_MAX_ENTRIES;
    // SAFETY: a non-null pointer to an array entry; only its `tid` is read, which the thread
    // named by it wrote when it claimed the slot.
    let owned = THREAD_SLOTS.get_ptr(index).is_some_and(|slot| unsafe { (*slot).tid } == rec.key.tid);
    if owned {
        if let Some(batch) = RECORD_BATCHES.get_ptr_mut(index) {
            // SAFETY: the batch of the slot this thread owns: one writer (see "one writer").
            let batch = unsafe { &mut *batch };
            // As in ExitStats::add: the volatile read keeps the bound check the verifier needs.
            // SAFETY: reads a live, initialized, aligned field.
            let len = unsafe { core::ptr::read_volatile(&batch.len) } as usize;
            if len < RECORD_BATCH_LEN {
                batch.records[len] = *rec;
            }
            let len = len + 1;
            if len < RECORD_BATCH_LEN {
                batch.len = len as u32;
                return;
            }
            batch.len = 0;
            if RECORDS.output::<[ExitRecord; RECORD_BATCH_LEN]>(&batch.records, 0).is_err() {
                bump_by(counter::RECORDS_DROPPED, RECORD_BATCH_LEN as u64);
            }
            return;
        }
    }
    if RECORDS.output::<ExitRecord>(rec, 0).is_err() {
        bump(counter::RECORDS_DROPPED);
    }
}

/// This CPU's `EXIT_STATS` slot of `key`: at the index cached in the thread state when the
/// thread's previous exit had the same key (no hash lookup), else at the key's `EXIT_INDEX`
/// index, a new key taking a free one. None when no index is free.
#[inline(always)]
fn exit_stats(s: &mut ThreadState, key: &ExitKey) -> Option<*mut ExitStats> {
    if s.stats_valid == 0 || s.stats_key != *key {
        // SAFETY: a non-null pointer to an EXIT_INDEX value, valid for the program run; only
        // the daemon changes an entry (deletes it, for a process that has ended).
        let index = match EXIT_INDEX.get_ptr(key) {
            Some(i) => unsafe { *i },
            None => new_exit_index(key)?,
        };
        s.stats_key = *key;
        s.stats_index = index as u32;
        s.stats_valid = 1;
    }
    EXIT_STATS.get_ptr_mut(s.stats_index)
}

/// Gives the new `key` a free `EXIT_STATS` index (its slots are all zero: never used, or zeroed
/// by the daemon before it gave the index back). BPF_NOEXIST: if another CPU gave the key an
/// index meanwhile, this one goes back to the queue and the key keeps that one.
#[inline(always)]
fn new_exit_index(key: &ExitKey) -> Option<u64> {
    let index = FREE_EXIT_INDEXES.pop().ok()??;
    if EXIT_INDEX.insert(key, index, BPF_NOEXIST as u64).is_ok() {
        return Some(index);
    }
    let _ = FREE_EXIT_INDEXES.push(index, 0);
    // SAFETY: as in exit_stats.
    EXIT_INDEX.get_ptr(key).map(|i| unsafe { *i })
}

/// Counts an exit whose key found no free `EXIT_STATS` index in `EXITS_OVERFLOW`; only when that is full
/// too is it lost (and counted as lost).
#[inline(always)]
fn charge_overflow(rec: &ExitRecord) {
    let slot = match EXITS_OVERFLOW.get_ptr_mut(rec.key) {
        Some(s) => Some(s),
        None => {
            // BPF_NOEXIST: another CPU's insert of the same key wins (the kernel zero-fills
            // the other CPUs' slots of a new per-CPU entry).
            let _ = EXITS_OVERFLOW.insert(rec.key, CountTime::default(), BPF_NOEXIST as u64);
            EXITS_OVERFLOW.get_ptr_mut(rec.key)
        }
    };
    match slot {
        // SAFETY: a non-null pointer to this CPU's slot of an EXITS_OVERFLOW entry: one writer.
        Some(s) => unsafe {
            (*s).count += 1;
            (*s).total_ns += rec.duration_ns;
        },
        None => bump(counter::EXIT_KEYS_FULL),
    }
}

fn now() -> u64 {
    // SAFETY: the helper takes no arguments and has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The u64 at `offset` in the `struct kvm_vcpu` at `vcpu` (see `kernel_read`: any vcpu or
/// offset is sound; a wrong one reads 0).
#[inline(always)]
fn vcpu_field(vcpu: u64, offset: &Global<u32>) -> u64 {
    kernel_read::read::<u64>(vcpu, offset.load() as u64)
}

/// Return address in the guest caller of the function that is exiting now, or
/// `UNKNOWN_CALLER`. Reads RBP/RSP/CR0/CR3/CR4/EFER from `struct kvm_vcpu` at BTF offsets, walks
/// the guest page tables (guest::translate, at most 5 reads) and reads `[RBP + 8]`; every
/// read of guest memory goes through the VMM's mapping of guest RAM, in the VMM's mm.
#[inline(always)]
fn caller_of(s: &mut ThreadState, t: &Thread) -> u64 {
    // First, so the pointer is cached even for a VMM without a memory map: the daemon
    // detaches the per-instruction program once every thread has one (Session::poll).
    let vcpu = thread_vcpu(s, t);
    // No VMM has a memory map (yet): skip the hash lookup.
    if GUEST_MEMORY_USED.get(0).copied() != Some(1) {
        return UNKNOWN_CALLER;
    }
    // SAFETY: `get` is unsafe because a preallocated hash entry replaced concurrently (the
    // daemon updating this VMM's map) may be reused and read torn. The value is plain integers
    // and only ever yields addresses for bpf_probe_read_user, which cannot fault: a torn map
    // at worst gives a wrong caller for this one exit.
    let Some(mem) = (unsafe { GUEST_MEMORY.get(t.tgid) }) else { return UNKNOWN_CALLER };
    if vcpu == 0 {
        return UNKNOWN_CALLER;
    }
    let (rbp, paging) = frame_registers(vcpu);
    // RSP is only a sanity check, and only when KVM says regs[RSP] is current (on VMX/SVM it
    // stays in the VMCS/VMCB unless something asked for it): a frame lies at or above RSP.
    let avail = vcpu_field(vcpu, &VCPU_REGS_AVAIL) as u32;
    if avail & REGS_AVAIL_RSP != 0 && rbp < vcpu_field(vcpu, &VCPU_RSP) {
        return UNKNOWN_CALLER;
    }
    let read = |gpa: u64| -> Option<u64> {
        let hva = mem.host_addr(gpa, 8)?;
        // SAFETY: a probe read of the VMM's memory (the current mm); a bad or unmapped
        // address makes the helper fail, it cannot fault.
        unsafe { bpf_probe_read_user(hva as *const u64).ok() }
    };
    guest::return_address(&paging, rbp, read).unwrap_or(UNKNOWN_CALLER)
}

/// The guest's RBP and paging registers, read from `struct kvm_vcpu` at BTF offsets: what
/// both the caller lookup and the stack walker start from.
#[inline(always)]
fn frame_registers(vcpu: u64) -> (u64, Paging) {
    let rbp = vcpu_field(vcpu, &VCPU_RBP);
    let paging = Paging {
        cr0: vcpu_field(vcpu, &VCPU_CR0),
        cr3: vcpu_field(vcpu, &VCPU_CR3),
        cr4: vcpu_field(vcpu, &VCPU_CR4),
        efer: vcpu_field(vcpu, &VCPU_EFER),
    };
    (rbp, paging)
}

/// Once per exit, right after it began: fills in its caller.
#[inline(always)]
fn attribute_caller(s: &mut ThreadState, t: &Thread) {
    if s.take_caller_lookup() {
        if stack::enabled() {
            stack::attribute_stack(s, t);
        } else {
            s.pending.key.caller = caller_of(s, t);
        }
    }
}

/// The `struct kvm_vcpu *` the current CPU's KVM thread last traced with.
#[repr(C)]
#[derive(Clone, Copy)]
struct VcpuSlot {
    tid: u32,
    _pad: u32,
    vcpu: u64,
}

/// One slot per CPU, written by the raw tracepoints below and read by the exit programs of the
/// same thread moments later. A per-CPU array lookup is inlined by the verifier (no hash, no
/// lock), which keeps the per-instruction program on the emulated source to a few stores.
#[map]
static VCPU_SLOT: PerCpuArray<VcpuSlot> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn note_vcpu(vcpu: u64) {
    let Some(t) = current_traced_thread() else { return };
    if let Some(slot) = VCPU_SLOT.get_ptr_mut(0) {
        // SAFETY: a non-null pointer to this CPU's slot of a per-CPU array: one writer.
        unsafe { *slot = VcpuSlot { tid: t.tid, _pad: 0, vcpu } };
    }
}

/// The thread's vcpu: from this CPU's slot when this thread wrote it, else the copy cached in
/// the thread state (the thread moved CPU between the two events). The pointer is constant
/// for a vCPU thread, so the cache is never stale. With a new vcpu, its emulator context and
/// `kvm_run` pointers (as constant) are read once into the state too.
///
/// Emulated source: once the emulator context is known, the state's copy is the answer. The
/// daemon detaches `vcpu_of_insn` as soon as every thread's vcpu is known, so the slot would
/// not change any more anyway: reading it on every exit bought nothing.
#[inline(always)]
fn thread_vcpu(s: &mut ThreadState, t: &Thread) -> u64 {
    if HW_SOURCE.load() == 0 && s.ctxt_ptr != 0 {
        return s.vcpu_ptr;
    }
    if let Some(slot) = VCPU_SLOT.get_ptr(0) {
        // SAFETY: a non-null pointer to this CPU's slot (plain integers); nothing else on
        // this CPU writes it while this program runs.
        let slot = unsafe { *slot };
        if slot.tid == t.tid && slot.vcpu != 0 && slot.vcpu != s.vcpu_ptr {
            s.vcpu_ptr = slot.vcpu;
            s.ctxt_ptr = 0;
            s.run_ptr = 0;
        }
    }
    if s.vcpu_ptr != 0 && s.ctxt_ptr == 0 {
        s.ctxt_ptr = vcpu_field(s.vcpu_ptr, &VCPU_EMULATE_CTXT);
        s.run_ptr = vcpu_field(s.vcpu_ptr, &VCPU_RUN);
    }
    s.vcpu_ptr
}

/// Raw tracepoint `kvm_emulate_insn(vcpu, failed)` (emulated source): the vcpu pointer.
///
/// Why a raw tracepoint, and per instruction: on this kernel BPF_PROG_TYPE_TRACING (fentry,
/// tp_btf) is not available (`bpftool feature probe`: "program_type tracing is NOT available"),
/// kprobes are not configured, and on PVM no other event that carries the vcpu fires per exit.
/// Raw tracepoints skip the tracepoint's TP_fast_assign and the perf buffer, and this program
/// only does a per-CPU store.
#[raw_tracepoint(tracepoint = "kvm_emulate_insn")]
pub fn vcpu_of_insn(ctx: RawTracePointContext) -> u32 {
    note_vcpu(ctx.arg(0));
    0
}

/// Raw tracepoint `kvm_exit(vcpu, isa)` (hw source). Attached after the classic `kvm_exit`
/// program, so it runs second: a thread's first exit finds no vcpu yet (caller unknown); later
/// exits use the pointer cached in the thread state.
#[raw_tracepoint(tracepoint = "kvm_exit")]
pub fn vcpu_of_exit(ctx: RawTracePointContext) -> u32 {
    note_vcpu(ctx.arg(0));
    0
}

// ---- emulated source (raw tracepoints) ----

/// Linear address of the instruction the emulator is on, as the kernel's kvm_emulate_insn
/// tracepoint computes it: `csbase + ctxt->_eip - (ctxt->fetch.ptr - ctxt->fetch.data)`, with
/// `ctxt = vcpu->arch.emulate_ctxt`. Valid from the instruction's decode until the next fetch,
/// which covers every exit event (profiler_common::EMULATOR_GLOBALS). CS base: 0 in 64-bit
/// mode; otherwise PVM's segment cache (what the kernel's tracepoint prints), or 0 when the
/// kernel has none. 0 (no RIP) when the vcpu is not known.
#[inline(always)]
fn insn_rip(s: &ThreadState) -> u64 {
    let ctxt = s.ctxt_ptr;
    if ctxt == 0 {
        return 0;
    }
    let read = |off: &Global<u32>| kernel_read::read::<u64>(ctxt, off.load() as u64);
    let (eip, ptr) = (read(&CTXT_EIP), read(&CTXT_FETCH_PTR));
    let data = ctxt + CTXT_FETCH_DATA.load() as u64;
    let len = ptr.wrapping_sub(data);
    if len > 15 {
        // Not a decoded instruction (x86 instructions are at most 15 bytes).
        return 0;
    }
    let mode = kernel_read::read::<u32>(ctxt, CTXT_MODE.load() as u64);
    linear(s.vcpu_ptr, mode, eip.wrapping_sub(len))
}

/// The RIP of the instruction the emulator is executing, at `kvm_pio` / `kvm_mmio`: its
/// `ctxt->eip` (see profiler_common::EMULATOR_GLOBALS), read with `mode` in one probe read
/// when they are neighbours (they are in 6.x kernels), plus the CS base outside 64-bit mode.
#[inline(always)]
fn access_rip(s: &ThreadState) -> u64 {
    let ctxt = s.ctxt_ptr;
    if ctxt == 0 {
        return 0;
    }
    let at = CTXT_START_EIP.load() as u64;
    let (eip, mode) = if CTXT_MODE.load() == CTXT_START_EIP.load() + 8 {
        let v = kernel_read::read::<[u64; 2]>(ctxt, at);
        (v[0], v[1] as u32)
    } else {
        (kernel_read::read::<u64>(ctxt, at), kernel_read::read::<u32>(ctxt, CTXT_MODE.load() as u64))
    };
    linear(s.vcpu_ptr, mode, eip)
}

/// Linear address of `rip` in emulator mode `mode`: CS base 0 in 64-bit mode; otherwise PVM's
/// segment cache (what the kernel's tracepoint prints), or 0 when the kernel has none.
#[inline(always)]
fn linear(vcpu: u64, mode: u32, rip: u64) -> u64 {
    let cs = VCPU_CS_BASE.load();
    let csbase = if mode == X86EMUL_MODE_PROT64 || cs == NO_CS_BASE {
        0
    } else {
        // The kernel's tracepoint stores csbase in a __u32 field: the same truncation here.
        vcpu_field(vcpu, &VCPU_CS_BASE) as u32 as u64
    };
    csbase.wrapping_add(rip)
}

// `#[inline(always)]` on a program's function (kvm_fpu, kvm_userspace_exit and the hw source's
// kvm_exit, kvm_entry): without it the compiler may leave the function a BPF-to-BPF call from
// the program's entry, ~15 ns per run here (examples/bpf_floor.rs). kvm_pio and kvm_mmio keep
// that call: inlined, the compiler stores the undefined payload of a `None` exit record, and
// the verifier rejects the read of a register never written.

/// Raw `kvm_pio(unsigned int rw, unsigned int port, unsigned int size, unsigned int count,
/// const void *data)`.
#[raw_tracepoint(tracepoint = "kvm_pio")]
pub fn kvm_pio(ctx: RawTracePointContext) -> u32 {
    let Some(t) = traced_thread() else { return 0 };
    let write = ctx.arg::<u64>(0) as u32 != 0;
    let port = ctx.arg::<u64>(1) as u32 as u64;
    let kind = if write { detail::PORT_OUT } else { detail::PORT_IN };
    access(t, kind, port);
    0
}

/// Raw `kvm_mmio(int type, int len, u64 gpa, void *val)`.
#[raw_tracepoint(tracepoint = "kvm_mmio")]
pub fn kvm_mmio(ctx: RawTracePointContext) -> u32 {
    let Some(t) = traced_thread() else { return 0 };
    let kind = match ctx.arg::<u64>(0) as u32 {
        mmio_type::WRITE => detail::MMIO_WRITE,
        _ => detail::MMIO_READ,
    };
    let gpa = ctx.arg::<u64>(2);
    access(t, kind, gpa);
    0
}

#[inline(always)]
fn access(t: Thread, kind: u8, addr: u64) {
    let Some(s) = thread_state(&t) else { return };
    if HW_SOURCE.load() != 0 {
        s.on_hw_detail(kind, addr);
    } else {
        thread_vcpu(s, &t);
        let rip = access_rip(s);
        let done = s.on_live_access(now(), t, kind, addr, rip);
        charge_exit(s, done);
        attribute_caller(s, &t);
    }
}

/// Raw `kvm_userspace_exit(u32 reason, int errno)`: attached only while some vCPU thread's
/// `struct kvm_vcpu *` is not known yet (with `vcpu_of_insn`, see `Session::poll`). Every
/// KVM_RUN return is handled at `kvm_fpu` unload, which fires just before this event; only a
/// return whose `kvm_run` it could not read is left to this program, which has the reason.
#[raw_tracepoint(tracepoint = "kvm_userspace_exit")]
#[inline(always)]
pub fn kvm_userspace_exit(ctx: RawTracePointContext) -> u32 {
    let Some(t) = traced_thread() else { return 0 };
    let reason = kvm_exit::userspace_exit_reason(ctx.arg::<u64>(0) as u32, ctx.arg::<u64>(1) as i32);
    if let Some(s) = thread_state(&t) {
        if s.take_return_handled() {
            return 0;
        }
        thread_vcpu(s, &t);
        let rip = insn_rip(s);
        let done = s.on_live_userspace_exit(now(), t, reason, rip);
        charge_exit(s, done);
        attribute_caller(s, &t);
    }
    0
}

/// Raw `kvm_fpu(int load)`: load = the thread entered KVM_RUN (the end of a user-space exit);
/// unload = KVM_RUN returns to user space (`kvm_put_guest_fpu` on its way out, right before
/// `kvm_userspace_exit`), which begins a user-space exit or marks the pending access's.
///
/// Why unload and not `kvm_userspace_exit`: the re-entry time needs this tracepoint anyway,
/// and it fires at every return too, so one program run per exit is saved (~60 ns here). What
/// `kvm_userspace_exit` has as arguments is read from the vcpu's `struct kvm_run` instead.
#[raw_tracepoint(tracepoint = "kvm_fpu")]
#[inline(always)]
pub fn kvm_fpu(ctx: RawTracePointContext) -> u32 {
    let load = ctx.arg::<u64>(0) as u32 != 0;
    let Some(t) = traced_thread() else { return 0 };
    if load {
        if let Some(s) = known_thread_state(&t) {
            s.on_run_entry(now());
        }
    } else if let Some(s) = thread_state(&t) {
        run_return(s, t);
    }
    0
}

/// A `kvm_fpu` unload of thread state `s`: see `kvm_fpu`.
#[inline(always)]
fn run_return(s: &mut ThreadState, t: Thread) {
    if s.run_ptr == 0 {
        thread_vcpu(s, &t);
    }
    let run = s.run_ptr;
    if run == 0 {
        // kvm_run unknown: leave the return to kvm_userspace_exit when it is attached.
        if CONTROL.get(maps::control::USERSPACE_EXIT_ATTACHED).copied() == Some(1) {
            return;
        }
        let done = s.on_live_return_unknown(now(), t);
        charge_exit(s, done);
        return;
    }
    // kvm_run bytes 0..40: immediate_exit (1), exit_reason (8), io (32: { u8 direction; u8
    // size; u16 port; u32 count }), little-endian, in one probe read.
    let r = kernel_read::read::<[u64; 5]>(run, 0);
    let immediate_exit = (r[(KVM_RUN_IMMEDIATE_EXIT / 8) as usize] >> (8 * (KVM_RUN_IMMEDIATE_EXIT % 8))) as u8;
    let exit_reason = (r[(KVM_RUN_EXIT_REASON / 8) as usize] >> (8 * (KVM_RUN_EXIT_REASON % 8))) as u32;
    let io = (r[(KVM_RUN_IO / 8) as usize] >> (8 * (KVM_RUN_IO % 8))) as u32;
    let reason = kvm_exit::run_return_reason(immediate_exit, exit_reason);
    let io_out_port = ((io & 0xff) as u8 == KVM_EXIT_IO_OUT).then_some((io >> 16) as u16);
    // Usually this is the exit of the port write or MMIO access just traced: mark it, no more.
    if s.on_live_userspace_exit_of_access(reason, || io_out_port) {
        s.return_handled = 1;
        return;
    }
    // Not a KVM_RUN return at all: the FPU put back after an ioctl that loaded it (xstate MSRs).
    if immediate_exit == 0 && VCPU_WANTS_TO_RUN.load() != NO_OFFSET {
        let wants = kernel_read::read::<u8>(s.vcpu_ptr, VCPU_WANTS_TO_RUN.load() as u64);
        if wants == 0 {
            return;
        }
    }
    s.return_handled = 1;
    let rip = insn_rip(s);
    let done = s.on_live_userspace_exit(now(), t, reason, rip);
    charge_exit(s, done);
    attribute_caller(s, &t);
}

// ---- hw source ----

#[tracepoint]
#[inline(always)]
pub fn kvm_exit(ctx: TracePointContext) -> u32 {
    let Some(t) = traced_thread() else { return 0 };
    let reason = field::<u32>(&ctx, &EXIT_REASON);
    let rip = field::<u64>(&ctx, &EXIT_GUEST_RIP);
    let isa = field::<u32>(&ctx, &EXIT_ISA) as u8;
    let vcpu = field::<u32>(&ctx, &EXIT_VCPU_ID);
    if let Some(s) = thread_state(&t) {
        let done = s.on_hw_exit(now(), t, vcpu, isa, reason, rip);
        charge_exit(s, done);
        attribute_caller(s, &t);
    }
    0
}

/// Raw `kvm_entry(vcpu, immediate_exit)`: only the time is needed, so no classic event (its
/// TP_fast_assign reads the RIP and more into a perf-buffer record on every entry).
///
/// `kvm_exit` stays a classic tracepoint: its raw arguments are only `(vcpu, isa)`, and on VMX
/// the guest RIP and exit reason live in the VMCS, which only the event's own TP_fast_assign
/// (`kvm_rip_read`, `get_exit_info`: VMREADs) can read; a BPF program cannot.
#[raw_tracepoint(tracepoint = "kvm_entry")]
#[inline(always)]
pub fn kvm_entry(_ctx: RawTracePointContext) -> u32 {
    let Some(t) = traced_thread() else { return 0 };
    if let Some(s) = known_thread_state(&t) {
        let done = s.on_hw_entry(now());
        charge_exit(s, done);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
