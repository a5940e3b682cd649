//! Shared between kvmprof's eBPF programs and user space: the map key and value layouts, the
//! streamed record, and the per-thread state machine that turns tracepoint events into exits.
//!
//! The state machine lives here, not in the eBPF crate, so the offline importer
//! (`kvmprof import`) runs the very same code over recorded `kvm_exit`/`kvm_entry` text that the
//! kernel runs live: that is how the `hw` path is tested on machines without VMX/SVM.
#![no_std]

/// Number of log2 buckets in the per-exit time histogram. Bucket `i` counts exits that took
/// `[2^i, 2^(i+1))` ns (bucket 0 also takes 0 ns); the last bucket takes everything longer.
pub const HIST_BUCKETS: usize = 32;

/// `vcpu` value when the tracepoints do not name the vCPU (the emulated source).
pub const NO_VCPU: u32 = u32::MAX;

/// `ExitKey::caller` when no caller frame could be read (no memory map yet, guest paging not
/// understood, page not present, ...).
pub const UNKNOWN_CALLER: u64 = 0;

pub mod guest;

/// `ExitKey::isa`: which table `reason` is a code of.
pub mod isa {
    /// `reason` is a `KVM_EXIT_*` code (emulated source, user-space exits).
    pub const KVM_EXIT: u8 = 0;
    /// `reason` is a VMX basic exit reason (`kvm_exit` with isa = KVM_ISA_VMX = 1).
    pub const VMX: u8 = 1;
    /// `reason` is an SVM exit code (`kvm_exit` with isa = KVM_ISA_SVM = 2).
    pub const SVM: u8 = 2;
}

/// `ExitKey::detail_kind`: what `detail` holds.
pub mod detail {
    pub const NONE: u8 = 0;
    pub const PORT_IN: u8 = 1;
    pub const PORT_OUT: u8 = 2;
    pub const MMIO_READ: u8 = 3;
    pub const MMIO_WRITE: u8 = 4;

    pub fn is_port(kind: u8) -> bool {
        kind == PORT_IN || kind == PORT_OUT
    }
    pub fn is_mmio(kind: u8) -> bool {
        kind == MMIO_READ || kind == MMIO_WRITE
    }
}

/// `KVM_EXIT_*` codes the state machine itself needs (uapi/linux/kvm.h).
pub mod kvm_exit {
    pub const IO: u32 = 2;
    pub const MMIO: u32 = 6;
}

/// `kvm_mmio` tracepoint `type` values (KVM_TRACE_MMIO_*).
pub mod mmio_type {
    pub const READ_UNSATISFIED: u32 = 0;
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
}

/// What one exit is aggregated by. Explicit padding keeps the bytes (the hash-map key) defined.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExitKey {
    /// Linear address of the instruction that exited (CS base + RIP).
    pub rip: u64,
    /// Port (for `PORT_*`) or guest-physical address (for `MMIO_*`), else 0.
    pub detail: u64,
    /// Return address in the guest function that called the one that exited (read at the exit
    /// through the guest's frame pointer, see [`guest`]); [`UNKNOWN_CALLER`] when not readable.
    pub caller: u64,
    /// Process (VMM) and thread (vCPU thread) ids.
    pub tgid: u32,
    pub tid: u32,
    /// `kvm_exit`'s vcpu_id, or [`NO_VCPU`].
    pub vcpu: u32,
    /// Exit reason code in the table named by `isa`.
    pub reason: u32,
    pub isa: u8,
    pub detail_kind: u8,
    pub _pad: [u8; 6],
}

/// Count, total time and log2 time histogram of the exits with one key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStats {
    pub count: u64,
    pub total_ns: u64,
    pub hist: [u64; HIST_BUCKETS],
}

impl Default for ExitStats {
    fn default() -> Self {
        ExitStats { count: 0, total_ns: 0, hist: [0; HIST_BUCKETS] }
    }
}

impl ExitStats {
    pub fn add(&mut self, ns: u64) {
        self.count += 1;
        self.total_ns += ns;
        let b = log2_bucket(ns);
        // The explicit bound check keeps the eBPF verifier convinced the index is in range.
        if b < HIST_BUCKETS {
            self.hist[b] += 1;
        }
    }

    pub fn merge(&mut self, other: &ExitStats) {
        self.count += other.count;
        self.total_ns += other.total_ns;
        let mut i = 0;
        while i < HIST_BUCKETS {
            self.hist[i] += other.hist[i];
            i += 1;
        }
    }
}

/// Histogram bucket for a duration: floor(log2(ns)), capped at the last bucket.
pub fn log2_bucket(ns: u64) -> usize {
    if ns < 2 {
        return 0;
    }
    let b = (63 - ns.leading_zeros()) as usize;
    if b >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        b
    }
}

/// One finished exit as streamed through the ring buffer (`record --records`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitRecord {
    pub key: ExitKey,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the exit began.
    pub start_ns: u64,
    pub duration_ns: u64,
}

/// An exit that has begun and not yet been charged.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingExit {
    pub key: ExitKey,
    pub start_ns: u64,
    /// When the thread re-entered the guest (0 = not seen yet).
    pub end_ns: u64,
    pub active: u8,
    /// The emulated exit has reached user space (`kvm_userspace_exit` seen).
    pub exited: u8,
    /// The caller of this exit has been looked up (see [`ThreadState::take_caller_lookup`]).
    pub caller_done: u8,
    /// The completion of this exit's MMIO read (`kvm_mmio` READ after the re-entry) has been
    /// seen: a further identical access is a new exit (the same instruction in a loop), not
    /// this one's completion.
    pub completed: u8,
    pub _pad: [u8; 4],
}

/// Per vCPU-thread state. Events of one thread arrive in order, so no locking is needed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    /// Linear address of the last instruction the emulator started on this thread.
    pub last_rip: u64,
    pub pending: PendingExit,
    /// Thread name and process, taken when the state is created, so a report can name vCPU
    /// threads (`vcpu0`, QEMU's `CPU 0/KVM`) even after the VMM has exited.
    pub comm: [u8; 16],
    pub tgid: u32,
    /// 1 when this state is driven by the live emulated-source programs, which get no
    /// per-instruction event (see [`ThreadState::on_live_access`]): an exit then cannot be
    /// ended by "the next instruction started", which changes how [`ThreadState::take_pending`]
    /// ends an exit that never reached user space. 0 for the hw source and the importer.
    pub no_insn_events: u8,
    pub _pad: [u8; 3],
    /// The thread's `struct kvm_vcpu *` (kernel address), as last seen by the raw tracepoint
    /// on `kvm_emulate_insn` / `kvm_exit`: the guest registers are read from it at each exit.
    pub vcpu_ptr: u64,
}

/// Who ran the event: the VMM process and its vCPU thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Thread {
    pub tgid: u32,
    pub tid: u32,
}

impl ThreadState {
    /// Charges the pending exit, ending it at its recorded re-entry or else at `now`.
    ///
    /// Live emulated source (`no_insn_events`): an access KVM handled in the kernel (no
    /// `kvm_userspace_exit`, so no re-entry either) has no observable end there: the next event
    /// on the thread is the next exit, possibly after a long stretch of guest execution, which
    /// must not be charged to the access. Such an exit is counted with 0 ns (its time is a
    /// lower bound, not a measurement). With per-instruction events (the importer) it ends
    /// when the next instruction starts, as before.
    pub fn take_pending(&mut self, now: u64) -> Option<ExitRecord> {
        if self.pending.active == 0 {
            return None;
        }
        let p = self.pending;
        self.pending = PendingExit::default();
        let end = if p.end_ns != 0 {
            p.end_ns
        } else if self.no_insn_events != 0 && p.exited == 0 {
            p.start_ns
        } else {
            now
        };
        Some(ExitRecord { key: p.key, start_ns: p.start_ns, duration_ns: end.saturating_sub(p.start_ns) })
    }

    fn begin(&mut self, now: u64, key: ExitKey, exited: bool) {
        self.pending = PendingExit {
            key,
            start_ns: now,
            end_ns: 0,
            active: 1,
            exited: exited as u8,
            caller_done: 0,
            completed: 0,
            _pad: [0; 4],
        };
    }

    // ---- hw source: kvm_exit / kvm_entry ----

    /// `kvm:kvm_exit`. An exit still pending (its entry was lost) is charged up to now.
    pub fn on_hw_exit(&mut self, now: u64, t: Thread, vcpu: u32, isa: u8, reason: u32, rip: u64) -> Option<ExitRecord> {
        let done = self.take_pending(now);
        let key = ExitKey { rip, tgid: t.tgid, tid: t.tid, vcpu, reason, isa, ..ExitKey::default() };
        self.begin(now, key, true);
        self.last_rip = rip;
        done
    }

    /// `kvm:kvm_entry`: the exit's time is entry − exit on the same thread.
    pub fn on_hw_entry(&mut self, now: u64) -> Option<ExitRecord> {
        self.take_pending(now)
    }

    /// `kvm:kvm_pio` / `kvm:kvm_mmio` on the hw source: adds the port or address to the
    /// pending exit; never starts one (the exit came from `kvm_exit`).
    pub fn on_hw_detail(&mut self, kind: u8, detail: u64) {
        if self.pending.active != 0 && self.pending.key.detail_kind == detail::NONE {
            self.pending.key.detail_kind = kind;
            self.pending.key.detail = detail;
        }
    }

    // ---- emulated source: kvm_emulate_insn + kvm_pio/kvm_mmio/kvm_userspace_exit + kvm_fpu ----

    /// `kvm:kvm_emulate_insn`: a new instruction starts, so any pending exit is over.
    pub fn on_emulated_insn(&mut self, now: u64, rip: u64) -> Option<ExitRecord> {
        let done = self.take_pending(now);
        self.last_rip = rip;
        done
    }

    /// `kvm:kvm_pio` (kind PORT_*) or `kvm:kvm_mmio` (kind MMIO_*) on the emulated source.
    /// Writes trace before the exit to user space, reads on completion after it; both name the
    /// exit of the instruction at `last_rip`.
    pub fn on_emulated_access(&mut self, now: u64, t: Thread, kind: u8, addr: u64) -> Option<ExitRecord> {
        let reason = if detail::is_port(kind) { kvm_exit::IO } else { kvm_exit::MMIO };
        let p = &mut self.pending;
        if p.active != 0 && p.key.rip == self.last_rip && p.key.reason == reason {
            if p.key.detail_kind == detail::NONE {
                // A read completing after its user-space exit.
                p.key.detail_kind = kind;
                p.key.detail = addr;
                return None;
            }
            if kind == detail::MMIO_READ
                && p.key.detail_kind == kind
                && p.key.detail == addr
                && p.exited != 0
                && p.completed == 0
            {
                // The completion (after re-entry) of an MMIO read already traced as
                // unsatisfied before its user-space exit. Only once: without per-instruction
                // events the same read again, in a loop, is a new exit.
                p.completed = 1;
                return None;
            }
        }
        let done = self.take_pending(now);
        let key = ExitKey {
            rip: self.last_rip,
            detail: addr,
            tgid: t.tgid,
            tid: t.tid,
            vcpu: NO_VCPU,
            reason,
            isa: isa::KVM_EXIT,
            detail_kind: kind,
            ..ExitKey::default()
        };
        self.begin(now, key, false);
        done
    }

    /// `kvm:kvm_userspace_exit`: KVM_RUN returned to the VMM with `reason`.
    pub fn on_userspace_exit(&mut self, now: u64, t: Thread, reason: u32) -> Option<ExitRecord> {
        let p = &mut self.pending;
        if p.active != 0 && p.exited == 0 && p.key.rip == self.last_rip && p.key.reason == reason {
            // The port/MMIO write traced just before this exit.
            p.exited = 1;
            return None;
        }
        let done = self.take_pending(now);
        let key = ExitKey {
            rip: self.last_rip,
            tgid: t.tgid,
            tid: t.tid,
            vcpu: NO_VCPU,
            reason,
            isa: isa::KVM_EXIT,
            ..ExitKey::default()
        };
        self.begin(now, key, true);
        done
    }

    // ---- live emulated source: no per-instruction event ----
    //
    // Tracing every emulated instruction cost ~250 ns per instruction (a PVM guest runs ~1 M
    // instructions/s through the emulator), so the live programs instead read, at each exit
    // event, the RIP of the instruction being emulated from the vcpu's emulator context (the
    // very expression the kernel's kvm_emulate_insn tracepoint prints). These take that RIP
    // with the event; the exit ends at re-entry (`on_run_entry`) and is charged at the next
    // exit event on the thread or when the recording ends (`Aggregate::finish_threads`).

    /// Live `kvm:kvm_pio` / `kvm:kvm_mmio`: `rip` is the linear address of the instruction
    /// that made the access.
    pub fn on_live_access(&mut self, now: u64, t: Thread, kind: u8, addr: u64, rip: u64) -> Option<ExitRecord> {
        self.no_insn_events = 1;
        self.last_rip = rip;
        self.on_emulated_access(now, t, kind, addr)
    }

    /// Live `kvm:kvm_userspace_exit`: `rip` is the last instruction the emulator decoded
    /// (the HLT, port or MMIO access that exited; for exits between instructions, such as a
    /// pending signal, the one before).
    pub fn on_live_userspace_exit(&mut self, now: u64, t: Thread, reason: u32, rip: u64) -> Option<ExitRecord> {
        self.no_insn_events = 1;
        self.last_rip = rip;
        self.on_userspace_exit(now, t, reason)
    }

    /// True once per exit, right after it began: the moment to read its caller, while the
    /// guest registers still belong to the exiting instruction. Later events of the same exit
    /// (a read's completion, the user-space exit after a write) return false, so the frame walk
    /// runs once per exit, never per instruction.
    pub fn take_caller_lookup(&mut self) -> bool {
        let p = &mut self.pending;
        if p.active == 0 || p.caller_done != 0 {
            return false;
        }
        p.caller_done = 1;
        true
    }

    /// `kvm:kvm_fpu` load: the thread re-entered KVM_RUN, which ends a user-space exit.
    pub fn on_run_entry(&mut self, now: u64) {
        let p = &mut self.pending;
        if p.active != 0 && p.exited != 0 && p.end_ns == 0 {
            p.end_ns = now;
        }
    }
}

/// Names and sizes of the maps, shared so the loader and the programs cannot disagree.
pub mod maps {
    /// `Array<u32>` of one slot: 1 while recording. Programs attach and detach one at a time;
    /// the switch makes the recorded window start after the last attach and end before the
    /// first detach, so no exit is seen by only some of the programs.
    pub const CONTROL: &str = "CONTROL";
    /// `PerCpuHashMap<ExitKey, ExitStats>`: the in-kernel aggregation.
    pub const EXITS: &str = "EXITS";
    pub const EXITS_MAX_ENTRIES: u32 = 65536;
    /// `HashMap<u32 tid, ThreadState>`: per vCPU-thread state machine.
    pub const THREADS: &str = "THREADS";
    pub const THREADS_MAX_ENTRIES: u32 = 16384;
    /// `RingBuf` of [`super::ExitRecord`], written only when records are requested.
    pub const RECORDS: &str = "RECORDS";
    pub const RECORDS_BYTES: u32 = 16 << 20;
    /// `PerCpuArray<u64>` of loss counters, indexed by [`super::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `HashMap<u32 tgid, guest::GuestMemMap>`: guest-physical -> host-virtual regions of each
    /// traced VMM, filled by the daemon (from `--guest-memory-map` or tinyvmm's `--memory-map`).
    pub const GUEST_MEMORY: &str = "GUEST_MEMORY";
    pub const GUEST_MEMORY_MAX_ENTRIES: u32 = 256;
}

/// Indexes into the `COUNTERS` map: everything that was lost is counted, never silent.
pub mod counter {
    /// Records that did not fit in the ring buffer (they are still aggregated).
    pub const RECORDS_DROPPED: u32 = 0;
    /// Exits not aggregated because `EXITS` was full.
    pub const EXIT_KEYS_FULL: u32 = 1;
    /// Events ignored because `THREADS` was full.
    pub const THREADS_FULL: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Read-only globals (besides the field offsets) the loader sets.
pub mod globals {
    /// `u32`: only this process is traced; 0 traces every process.
    pub const TARGET_TGID: &str = "TARGET_TGID";
    /// `u8`: 1 streams every exit through `RECORDS`.
    pub const STREAM_RECORDS: &str = "STREAM_RECORDS";
    /// `u8`: 1 = hw source (`kvm_pio`/`kvm_mmio` only add detail to a `kvm_exit`).
    pub const HW_SOURCE: &str = "HW_SOURCE";
}

/// Offsets of the tracepoint fields the eBPF programs read, taken at load time from the
/// running kernel's `events/kvm/*/format` files (never from a header) and passed in as
/// read-only globals. Names are `<EVENT>_<FIELD>`.
/// Only the hw source's `kvm_exit` is a classic tracepoint program: every emulated-source
/// event is a raw tracepoint (its arguments are the TP_PROTO arguments, no format file).
pub const FIELD_GLOBALS: &[(&str, &str, &str)] = &[
    ("EXIT_REASON", "kvm_exit", "exit_reason"),
    ("EXIT_GUEST_RIP", "kvm_exit", "guest_rip"),
    ("EXIT_ISA", "kvm_exit", "isa"),
    ("EXIT_VCPU_ID", "kvm_exit", "vcpu_id"),
];

/// Byte offsets inside `struct kvm_vcpu` the programs read guest registers at, taken at load
/// time from the running kernel's BTF (`/sys/kernel/btf/vmlinux`), never from a header: the
/// layout changes with kernel version and config. `(global, kvm_vcpu_arch member, index)`:
/// the offset is `offsetof(kvm_vcpu, arch) + offsetof(kvm_vcpu_arch, member) + 8 * index`.
pub const VCPU_GLOBALS: &[(&str, &str, u32)] = &[
    // regs[VCPU_REGS_RSP = 4], regs[VCPU_REGS_RBP = 5] (arch/x86/include/asm/kvm_vcpu_regs.h).
    ("VCPU_RSP", "regs", 4),
    ("VCPU_RBP", "regs", 5),
    ("VCPU_REGS_AVAIL", "regs_avail", 0),
    ("VCPU_CR0", "cr0", 0),
    ("VCPU_CR3", "cr3", 0),
    ("VCPU_CR4", "cr4", 0),
    ("VCPU_EFER", "efer", 0),
    // The instruction emulator's state (a pointer to struct x86_emulate_ctxt): the live
    // emulated source reads the exiting instruction's RIP from it (see EMULATOR_GLOBALS).
    ("VCPU_EMULATE_CTXT", "emulate_ctxt", 0),
];

/// Byte offsets inside `struct x86_emulate_ctxt` (from the running kernel's BTF), for the RIP
/// of the instruction being emulated, computed exactly as the kernel's `kvm_emulate_insn`
/// tracepoint does: `rip = ctxt->_eip - (ctxt->fetch.ptr - ctxt->fetch.data)`. `_eip` and
/// `fetch.ptr` advance together while the instruction is decoded, so the expression names the
/// instruction's first byte from decode until the next instruction is fetched: at `kvm_pio`
/// (mid-instruction, also on a read's completion), `kvm_mmio` and `kvm_userspace_exit`.
/// `(global, member path, expected width)`; `fetch.data` is an array: its address is used.
pub const EMULATOR_GLOBALS: &[(&str, &[&str], u64)] = &[
    ("CTXT_EIP", &["_eip"], 8),
    ("CTXT_MODE", &["mode"], 4),
    ("CTXT_FETCH_PTR", &["fetch", "ptr"], 8),
    ("CTXT_FETCH_DATA", &["fetch", "data"], 15),
];

/// `x86_emulate_ctxt::mode` value for 64-bit mode (`enum x86emul_mode`), where the CS base is
/// ignored by the CPU and taken as 0.
pub const X86EMUL_MODE_PROT64: u32 = 4;

/// Global: offset in the vcpu of the CS base in PVM's segment cache
/// (`struct vcpu_pvm { struct kvm_vcpu vcpu; struct kvm_segment seg[8]; ... }`, `seg[VCPU_SREG_CS
/// = 1].base`, what PVM's `get_segment_base(vcpu, CS)` returns to the kernel's own tracepoint),
/// or [`NO_CS_BASE`] when the kernel has no such struct (then a linear RIP outside 64-bit mode
/// assumes CS base 0).
pub const VCPU_CS_BASE: &str = "VCPU_CS_BASE";
pub const NO_CS_BASE: u32 = u32::MAX;

/// Bit of `kvm_vcpu_arch::regs_avail` saying `regs[VCPU_REGS_RSP]` is current. On VMX/SVM the
/// guest RSP lives in the VMCS/VMCB and is copied into `regs[]` only on demand.
pub const REGS_AVAIL_RSP: u32 = 1 << 4;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), made only of integers, with explicit padding.
    unsafe impl aya::Pod for super::guest::GuestMemMap {}
    unsafe impl aya::Pod for super::ExitKey {}
    unsafe impl aya::Pod for super::ExitStats {}
    unsafe impl aya::Pod for super::ThreadState {}
    unsafe impl aya::Pod for super::ExitRecord {}
}
