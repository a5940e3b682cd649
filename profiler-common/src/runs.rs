//! Run detection: successive I/O exits of one vCPU thread that a guest driver could batch.
//!
//! A *run* is a sequence of finished exits of one thread, all of one access kind (port write,
//! port read, MMIO write or MMIO read: [`crate::detail`]), where each exit starts at most
//! `max_gap_ns` after the previous one re-entered the guest (the guest ran only a few
//! instructions in between). A read ends a run of writes and vice versa: the guest usually needs
//! a read's value (a status poll) before it goes on, so a queue of writes cannot carry it.
//!
//! Runs are aggregated by their signature: the ordered list of (RIP, kind, port or GPA), folded
//! into a 64-bit hash, and the run length. The first [`RUN_ACCESSES`] accesses are kept as they
//! are; a longer run is still told apart by its hash and length. Runs of length 1 are not
//! aggregated (nothing to batch).
//!
//! [`RunState::on_exit`] is fed every finished exit ([`crate::ExitRecord`]) of a thread in order:
//! by the eBPF `charge` live, and by the importer and the daemon's end-of-recording flush in
//! user space, so both find the same runs.
use crate::{detail, ExitRecord};

/// Accesses of a run kept verbatim (the signature hash and length cover the rest).
pub const RUN_ACCESSES: usize = 16;

/// Default `max_gap_ns` on the emulated source (PVM), from measurements here (`record
/// --records` of tinyvmm's 100-sector disk-write): accesses a few instructions apart re-enter
/// and exit again 3-10 µs apart (median 4-8 µs), with a tail from host interruptions (107 of
/// 25 500 data-port gaps over 20 µs, the largest 60 µs), while the least guest work between
/// two IDE commands took 637 µs (and ~1 000 emulated instructions of work about 610 µs).
/// 200 µs absorbs the tail and stays 3x below that work. A preemption of the vCPU thread
/// (milliseconds) still splits a run.
pub const DEFAULT_MAX_GAP_NS_EMULATED: u64 = 200_000;
/// Default `max_gap_ns` on the hw source (VMX/SVM): the guest runs natively, so a gap is the
/// VM entry + exit transitions (about 1 µs) plus a few native instructions; 5 µs is a few
/// thousand native instructions, still far below the work between two driver requests.
pub const DEFAULT_MAX_GAP_NS_HW: u64 = 5_000;

/// The signature hash of an empty run; [`hash_step`] folds in each access, in order.
pub const HASH_START: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Folds one access into a run's signature hash (FNV-1a-like over the two words).
#[inline(always)]
pub fn hash_step(h: u64, a: &RunAccess) -> u64 {
    ((h ^ a.rip).wrapping_mul(FNV_PRIME) ^ a.kind_addr).wrapping_mul(FNV_PRIME)
}

/// What a run is aggregated by (`RUNS` map key).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunKey {
    pub tgid: u32,
    /// Exits in the run.
    pub length: u32,
    /// Signature hash over every access of the run, in order (see [`RunState::on_exit`]).
    pub hash: u64,
}

/// One access of a run: RIP, and the port or GPA with the access kind in the top byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunAccess {
    pub rip: u64,
    /// `addr | kind << 56` (ports are 16 bits, GPAs at most 52).
    pub kind_addr: u64,
}

impl RunAccess {
    pub fn new(rip: u64, kind: u8, addr: u64) -> RunAccess {
        RunAccess { rip, kind_addr: (addr & ADDR_MASK) | ((kind as u64) << 56) }
    }
    pub fn kind(&self) -> u8 {
        (self.kind_addr >> 56) as u8
    }
    pub fn addr(&self) -> u64 {
        self.kind_addr & ADDR_MASK
    }
}

const ADDR_MASK: u64 = (1 << 56) - 1;

/// Occurrences and exit time of one run signature (`RUNS` map value), with its accesses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunStats {
    pub occurrences: u64,
    /// Total time of the run's exits (not of the guest work between them).
    pub total_ns: u64,
    /// The first `min(length, RUN_ACCESSES)` accesses; entries past that are meaningless.
    pub accesses: [RunAccess; RUN_ACCESSES],
    /// The [`crate::detail`] kind of every exit of the run.
    pub kind: u8,
    pub _pad: [u8; 7],
}

impl Default for RunStats {
    fn default() -> Self {
        RunStats { occurrences: 0, total_ns: 0, accesses: [RunAccess::default(); RUN_ACCESSES], kind: 0, _pad: [0; 7] }
    }
}

impl RunStats {
    pub fn has_reads(&self) -> bool {
        self.kind == detail::PORT_IN || self.kind == detail::MMIO_READ
    }
}

/// The run a thread is in (part of [`crate::ThreadState`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunState {
    /// `length` 0 = no run open.
    pub key: RunKey,
    /// When the run's last exit ended (re-entry).
    pub last_end_ns: u64,
    /// The open run, `occurrences` = 1.
    pub cur: RunStats,
}

impl RunState {
    /// Feeds the thread's next finished exit. When it cannot extend the open run (another kind,
    /// not an access at all, or more than `max_gap_ns` after the previous exit re-entered),
    /// the open run ends: if it has two exits or more, `emit` gets it (once), before this exit
    /// starts a new run.
    #[inline(always)]
    pub fn on_exit(&mut self, rec: &ExitRecord, max_gap_ns: u64, emit: impl FnOnce(&RunKey, &RunStats)) {
        let kind = rec.key.detail_kind;
        let access = detail::is_port(kind) || detail::is_mmio(kind);
        let extends = access
            && self.key.length != 0
            && self.cur.kind == kind
            && self.key.tgid == rec.key.tgid
            && rec.start_ns.saturating_sub(self.last_end_ns) <= max_gap_ns;
        if !extends {
            self.finish(emit);
            if !access {
                return;
            }
            self.key = RunKey { tgid: rec.key.tgid, length: 0, hash: HASH_START };
            self.cur.kind = kind;
            self.cur.occurrences = 1;
            self.cur.total_ns = 0;
        }
        let a = RunAccess::new(rec.key.rip, kind, rec.key.detail);
        let i = self.key.length as usize;
        // As in ExitStats::add: the volatile read keeps the bound check that the verifier
        // needs in the eBPF build (LLVM would otherwise fold it into the length comparison).
        // SAFETY: reads a live, initialized, aligned local.
        let i = unsafe { core::ptr::read_volatile(&i) };
        if i < RUN_ACCESSES {
            self.cur.accesses[i] = a;
        }
        self.key.hash = hash_step(self.key.hash, &a);
        self.key.length += 1;
        self.cur.total_ns += rec.duration_ns;
        self.last_end_ns = rec.start_ns + rec.duration_ns;
    }

    /// Ends the open run (the recording ends, or the thread is gone): `emit` gets it if it has
    /// two exits or more.
    #[inline(always)]
    pub fn finish(&mut self, emit: impl FnOnce(&RunKey, &RunStats)) {
        if self.key.length >= 2 {
            emit(&self.key, &self.cur);
        }
        self.key.length = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExitKey;

    fn rec(start: u64, dur: u64, rip: u64, kind: u8, port: u64) -> ExitRecord {
        ExitRecord { key: ExitKey { rip, detail: port, detail_kind: kind, tgid: 7, ..ExitKey::default() }, start_ns: start, duration_ns: dur }
    }

    fn feed(recs: &[ExitRecord], gap: u64) -> std::vec::Vec<(RunKey, RunStats)> {
        let mut s = RunState::default();
        let mut out = std::vec::Vec::new();
        for r in recs {
            s.on_exit(r, gap, |k, v| out.push((*k, *v)));
        }
        s.finish(|k, v| out.push((*k, *v)));
        out
    }

    extern crate std;

    #[test]
    fn writes_close_together_form_one_run_reads_and_gaps_split() {
        let o = detail::PORT_OUT;
        let recs = [
            rec(0, 10, 0x10, detail::PORT_IN, 0x1f7),
            rec(15, 10, 0x20, o, 0x1f1),
            rec(30, 10, 0x21, o, 0x1f2),
            rec(45, 10, 0x22, o, 0x1f3),
            rec(60, 10, 0x23, detail::PORT_IN, 0x1f7),
            rec(1_000, 10, 0x20, o, 0x1f1), // far: a new run
            rec(1_015, 10, 0x21, o, 0x1f2),
        ];
        let runs = feed(&recs, 6);
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].0.length, runs[0].1.total_ns, runs[0].1.kind), (3, 30, o));
        let a: std::vec::Vec<(u64, u8, u64)> = runs[0].1.accesses[..3].iter().map(|a| (a.rip, a.kind(), a.addr())).collect();
        assert_eq!(a, [(0x20, o, 0x1f1), (0x21, o, 0x1f2), (0x22, o, 0x1f3)]);
        assert_eq!(runs[1].0.length, 2);
        assert!(!runs[0].1.has_reads());
        // The same two first accesses, a different length: a different signature.
        assert_ne!(runs[0].0.hash, runs[1].0.hash);
    }

    #[test]
    fn long_runs_keep_the_first_accesses_and_count_all() {
        let recs: std::vec::Vec<ExitRecord> = (0..256).map(|i| rec(i * 20, 10, 0x451, detail::PORT_OUT, 0x1f0)).collect();
        let runs = feed(&recs, 10);
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].0.length, runs[0].1.total_ns), (256, 2560));
        assert!(runs[0].1.accesses.iter().all(|a| a.rip == 0x451 && a.addr() == 0x1f0));
    }

    #[test]
    fn other_exits_end_a_run_and_single_exits_are_not_runs() {
        let mut hlt = rec(25, 5, 0x30, detail::NONE, 0);
        hlt.key.reason = 5;
        let recs = [rec(0, 10, 0x20, detail::PORT_OUT, 1), rec(12, 10, 0x21, detail::PORT_OUT, 2), hlt, rec(31, 1, 0x20, detail::PORT_OUT, 1)];
        let runs = feed(&recs, 100);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].0.length, 2);
    }
}
