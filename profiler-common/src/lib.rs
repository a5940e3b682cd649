//! Shared between kvmprof's eBPF programs and user space: the map key and value layouts, the
//! streamed record, and the per-thread state machine that turns tracepoint events into exits.
//!
//! The state machine lives here, not in the eBPF crate, so the offline importer
//! (`kvmprof import`) runs the very same code over recorded `kvm_exit`/`kvm_entry` text that the
//! kernel runs live: that is how the `hw` path is tested on machines without VMX/SVM.
#![no_std]

/// `vcpu` value when the tracepoints do not name the vCPU (the emulated source).
pub const NO_VCPU: u32 = u32::MAX;

/// `ExitKey::caller` when no caller frame could be read (no memory map yet, guest paging not
/// understood, page not present, ...).
pub const UNKNOWN_CALLER: u64 = 0;

pub mod guest;
mod hex;
mod hist;
mod loader;
pub mod runs;
pub mod unwind;
mod state;

pub use hex::parse_hex;
pub use hist::*;
pub use loader::*;
pub use state::{PendingExit, Thread, ThreadSlot, ThreadState};

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
    pub const UNKNOWN: u32 = 0;
    pub const IO: u32 = 2;
    pub const MMIO: u32 = 6;
    pub const INTR: u32 = 10;
    const EINTR: i32 = 4;

    /// The reason of a `kvm_userspace_exit(reason, errno)`. When KVM_RUN fails (errno < 0),
    /// `reason` still holds the previous exit's value: an interrupted run (-EINTR, a signal
    /// such as a VMM kicking its vCPU thread) is `INTR`, any other error `UNKNOWN`, never a
    /// second copy of the last exit.
    pub fn userspace_exit_reason(reason: u32, errno: i32) -> u32 {
        match errno {
            0.. => reason,
            e if e == -EINTR => INTR,
            _ => UNKNOWN,
        }
    }

    /// The reason of a KVM_RUN return read from the vcpu's `struct kvm_run` at `kvm_fpu`
    /// unload (which has no errno): `immediate_exit` set makes KVM_RUN return -EINTR at once
    /// without touching `exit_reason` (so: `INTR`, as [`userspace_exit_reason`] gives); every
    /// other -EINTR path stores `KVM_EXIT_INTR` itself (`kvm_handle_signal_exit`). Other
    /// errors (-EFAULT, -EAGAIN of a vCPU waiting for SIPI, ...) leave the previous reason
    /// there, which this cannot tell apart from a new exit of that reason.
    pub fn run_return_reason(immediate_exit: u8, exit_reason: u32) -> u32 {
        if immediate_exit != 0 {
            INTR
        } else {
            exit_reason
        }
    }
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
    pub _pad: [u8; 2],
    /// The guest stack of this exit (`record --stack-depth` above 1): its id in the `STACKS`
    /// map ([`unwind::stack_id`]), or 0 when no stack was walked. In former padding, so the
    /// key keeps its size and old files (zeros here) read as "no stack".
    pub stack: u32,
}

/// Count, total time and time histogram (layout: [`hist_bucket`]) of the exits with one key.
/// About 2 KiB: never build one on the BPF stack (512 bytes).
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
        let b = hist_bucket(ns);
        // The eBPF verifier cannot bound hist_bucket's result (leading_zeros becomes a
        // bit-twiddling sequence on BPF), so it needs the explicit bound check below. LLVM,
        // which can bound it, would drop that check as redundant; reading the index through a
        // volatile load hides its value from LLVM, so the check stays. (Measured: without the
        // volatile the programs fail to load, "math between map_value pointer and register
        // with unbounded min value".)
        // SAFETY: reads a live, initialized, aligned local.
        let b = unsafe { core::ptr::read_volatile(&b) };
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

/// Count and total time of the exits of one key that found `EXITS` full (`EXITS_OVERFLOW`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountTime {
    pub count: u64,
    pub total_ns: u64,
}

impl CountTime {
    /// The same counts as an `ExitStats` whose histogram is empty (no time distribution kept).
    pub fn to_stats(self) -> ExitStats {
        ExitStats { count: self.count, total_ns: self.total_ns, ..ExitStats::default() }
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

/// Records per [`RecordBatch`].
pub const RECORD_BATCH_LEN: usize = 8;

/// A vCPU thread's finished exits waiting to go through the ring buffer together
/// (`maps::RECORD_BATCHES`): one ring-buffer write per [`RECORD_BATCH_LEN`] exits instead of a
/// reserve and a submit per exit (measured: ~160 ns per exit here). Kept per thread, so each
/// thread's records stay in order; a batch not yet full is read by the daemon at the end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordBatch {
    /// How many of `records` are filled (always `< RECORD_BATCH_LEN` between exits).
    pub len: u32,
    pub _pad: u32,
    pub records: [ExitRecord; RECORD_BATCH_LEN],
}

impl RecordBatch {
    /// The filled records (`len` clamped: the value may come from a damaged or racing read).
    pub fn filled(&self) -> &[ExitRecord] {
        &self.records[..(self.len as usize).min(RECORD_BATCH_LEN)]
    }
}

// These layouts are shared with the kernel (map keys and values, ring-buffer records) and, via
// the daemon, with recording files: a change must be deliberate, not a side effect.
const _: () = assert!(core::mem::size_of::<ExitKey>() == 48);
const _: () = assert!(core::mem::size_of::<ExitRecord>() == 64);
const _: () = assert!(core::mem::size_of::<RecordBatch>() == 8 + 64 * RECORD_BATCH_LEN);
const _: () = assert!(core::mem::size_of::<ThreadState>() == 128 + core::mem::size_of::<runs::RunState>() + 56);
const _: () = assert!(core::mem::size_of::<runs::RunState>() == 304);
const _: () = assert!(core::mem::size_of::<ExitStats>() == 16 + 8 * HIST_BUCKETS);
const _: () = assert!(core::mem::size_of::<unwind::GuestStack>() == 8 + 8 * unwind::MAX_STACK_DEPTH);

#[cfg(feature = "user")]
mod pod {
    // Pod promises that any bytes are a valid value and that the value has no uninitialized
    // (padding) bytes: each type below is repr(C), made only of integers and arrays of them,
    // with its padding spelled out as `_pad` fields.

    // SAFETY: repr(C) integers; `_pad` covers the gap after `count`.
    unsafe impl aya::Pod for super::guest::GuestMemMap {}
    // SAFETY: repr(C) integers; `_pad` fills the tail to the 8-byte alignment.
    unsafe impl aya::Pod for super::ExitKey {}
    // SAFETY: repr(C), u64s only.
    unsafe impl aya::Pod for super::ExitStats {}
    // SAFETY: repr(C) integers and Pod structs; `_pad` fields fill every gap.
    unsafe impl aya::Pod for super::ThreadState {}
    // SAFETY: repr(C), two u32 and a ThreadState (Pod, 8-byte aligned): no padding.
    unsafe impl aya::Pod for super::ThreadSlot {}
    // SAFETY: repr(C), an ExitKey (Pod, size a multiple of 8) and u64s.
    unsafe impl aya::Pod for super::ExitRecord {}
    // SAFETY: repr(C), u32, u32 (the padding spelled out), then ExitRecords (Pod, 8-aligned).
    unsafe impl aya::Pod for super::RecordBatch {}
    // SAFETY: repr(C), two u64, no padding.
    unsafe impl aya::Pod for super::CountTime {}
    // SAFETY: repr(C), u32, u32, u64: no padding.
    unsafe impl aya::Pod for super::runs::RunKey {}
    // SAFETY: repr(C), u8s filling 8 bytes, then u64s: no padding.
    unsafe impl aya::Pod for super::unwind::GuestStack {}
    // SAFETY: repr(C): u64, i16, i16, u8, u8 and `_pad` filling the tail to 16 bytes.
    unsafe impl aya::Pod for super::unwind::UnwindEntry {}
    // SAFETY: repr(C), u64s, an array of u64 pairs, and `_pad` filling the tail after `kind`.
    unsafe impl aya::Pod for super::runs::RunStats {}
}
