//! Events to exits: the replay stage of the import, one thread, in trace order, through the
//! same per-thread state machine the eBPF programs run.
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use profiler_common::{hist_bucket, ExitKey, ExitRecord, ExitStats, Thread, ThreadState, HIST_BUCKETS};

use super::parse::{Ev, Parsed};
use crate::model::aggregate::Aggregate;
use crate::model::record_stream::StreamWriter;

/// The per-thread state machines, the aggregate and the record stream.
pub(super) struct Machine<'s> {
    hw: bool,
    threads: Threads,
    pub agg: Aggregate,
    /// Exit sites numbered in order of appearance (the record stream's site numbers), and
    /// their exits charged while reading (merged into `agg` at the end): one lookup per exit
    /// in a hash map with a fast hasher, not two in ordered maps.
    sites: HashMap<SiteKey, u32, foldhash::fast::RandomState>,
    keys: Vec<ExitKey>,
    stats: Vec<SiteStats>,
    /// The full histograms of the sites whose durations found no slot ([`SiteStats::spill`]).
    spilled: Vec<[u64; HIST_BUCKETS]>,
    pub records: Option<&'s mut StreamWriter>,
}

/// An exit key hashed as one word folded from its fields (the derived `Hash` feeds the
/// hasher eleven fields one by one, a third of a lookup's time).
#[derive(PartialEq, Eq)]
struct SiteKey(ExitKey);

impl Hash for SiteKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let k = &self.0;
        let ids = (k.tgid as u64) << 32 | k.tid as u64;
        let what = (k.reason as u64) << 32 | (k.vcpu as u64) ^ (k.stack as u64).rotate_left(16) ^ (k.isa as u64) << 60 ^ (k.detail_kind as u64) << 52;
        h.write_u64(k.rip ^ k.detail.rotate_left(21) ^ k.caller.rotate_left(42) ^ ids.rotate_left(11) ^ what.rotate_left(33));
    }
}

/// One site's count, total and histogram, in two cache lines: the durations of one site fall
/// in a few buckets, so those are kept in slots beside the count (the full 2 KiB histogram
/// per site would make every exit two cache misses once there are thousands of sites).
#[repr(C, align(64))]
#[derive(Clone, Copy, Default)]
struct SiteStats {
    count: u64,
    total_ns: u64,
    /// `bucket << 56 | exits`, filled from the front; 0 is a free slot (a used one counts at
    /// least one exit).
    slots: [u64; SLOTS],
    /// 1 + the index in [`Machine::spilled`] of the histogram of the buckets that found no
    /// slot; 0 when none did.
    spill: u64,
}

const SLOTS: usize = 13;
const SLOT_BUCKET: u64 = 0xff << 56;
const _: () = assert!(std::mem::size_of::<SiteStats>() == 128 && HIST_BUCKETS <= 256);

impl SiteStats {
    /// As `ExitStats::add`.
    fn add(&mut self, ns: u64, spilled: &mut Vec<[u64; HIST_BUCKETS]>) {
        self.count += 1;
        self.total_ns += ns;
        let bucket = hist_bucket(ns);
        let tag = (bucket as u64) << 56;
        for slot in &mut self.slots {
            if *slot == 0 {
                *slot = tag | 1;
                return;
            }
            if *slot & SLOT_BUCKET == tag {
                *slot += 1;
                return;
            }
        }
        if self.spill == 0 {
            spilled.push([0; HIST_BUCKETS]);
            self.spill = spilled.len() as u64;
        }
        spilled[self.spill as usize - 1][bucket] += 1;
    }

    fn to_stats(&self, spilled: &[[u64; HIST_BUCKETS]]) -> ExitStats {
        let mut s = ExitStats { count: self.count, total_ns: self.total_ns, ..ExitStats::default() };
        if self.spill != 0 {
            s.hist = spilled[self.spill as usize - 1];
        }
        for slot in self.slots.iter().filter(|s| **s != 0) {
            s.hist[(slot >> 56) as usize] += slot & !SLOT_BUCKET;
        }
        s
    }
}

/// The state machines by thread: in a vector, found through a small direct-mapped cache in
/// front of the hash map (a trace has a few vCPU threads taking turns).
#[derive(Default)]
struct Threads {
    states: Vec<ThreadState>,
    index: HashMap<u32, u32, foldhash::fast::RandomState>,
    /// `(tid, index)` by `tid % CACHED_THREADS`; index `u32::MAX`: empty.
    cache: Vec<(u32, u32)>,
}

const CACHED_THREADS: usize = 64;

impl Threads {
    fn new() -> Threads {
        Threads { cache: vec![(0, u32::MAX); CACHED_THREADS], ..Threads::default() }
    }

    #[inline]
    fn index(&mut self, tid: u32) -> usize {
        let slot = tid as usize % CACHED_THREADS;
        let (cached, i) = self.cache[slot];
        if cached == tid && i != u32::MAX {
            return i as usize;
        }
        let next = self.states.len() as u32;
        let i = *self.index.entry(tid).or_insert(next);
        if i == next {
            self.states.push(ThreadState::default());
        }
        self.cache[slot] = (tid, i);
        i as usize
    }
}

impl<'s> Machine<'s> {
    pub fn new(hw: bool, agg: Aggregate, records: Option<&'s mut StreamWriter>) -> Machine<'s> {
        Machine { hw, threads: Threads::new(), agg, sites: HashMap::default(), keys: Vec::new(), stats: Vec::new(), spilled: Vec::new(), records }
    }

    /// The exit's site number, numbering a new site.
    fn site(&mut self, key: &ExitKey) -> u32 {
        let next = self.stats.len() as u32;
        let site = *self.sites.entry(SiteKey(*key)).or_insert(next);
        if site == next {
            self.stats.push(SiteStats::default());
            self.keys.push(*key);
        }
        site
    }

    /// Replays one event through its thread's state machine, exactly as the eBPF programs
    /// would; a finished exit is charged and streamed.
    pub fn apply(&mut self, p: &Parsed) {
        let (t, now) = (p.t, p.ts);
        let thread = self.threads.index(t.tid);
        let s = &mut self.threads.states[thread];
        let done = match p.ev {
            Ev::Exit { vcpu, isa, reason, rip } => s.on_hw_exit(now, t, vcpu, isa, reason, rip),
            Ev::Entry => s.on_hw_entry(now),
            Ev::Access { kind, addr } => access(s, self.hw, now, t, kind, addr),
            Ev::Insn { addr } => s.on_emulated_insn(now, addr),
            Ev::UserspaceExit { reason } => s.on_userspace_exit(now, t, reason),
            Ev::RunEntry => {
                s.on_run_entry(now);
                None
            }
            Ev::Nothing => None,
        };
        if let Some(rec) = done {
            let site = self.site(&rec.key);
            self.stats[site as usize].add(rec.duration_ns, &mut self.spilled);
            if let Some(w) = &mut self.records {
                w.push_site(site, &rec);
            }
            self.agg.detect_runs(&mut self.threads.states[thread], &rec);
        }
    }

    /// The aggregate of every exit, with the exits still open at the end charged as `record`
    /// charges them (and streamed after the others).
    pub fn finish(&mut self) -> Aggregate {
        let mut agg = std::mem::take(&mut self.agg);
        for (key, stats) in self.keys.iter().zip(&self.stats) {
            agg.merge(*key, &stats.to_stats(&self.spilled));
        }
        let mut open = Aggregate::new(true);
        open.max_gap_ns = agg.max_gap_ns;
        open.finish_threads(self.threads.states.iter_mut());
        for rec in open.records.take().unwrap_or_default() {
            let site = self.site(&rec.key);
            if let Some(w) = &mut self.records {
                w.push_site(site, &rec);
            }
        }
        for (key, stats) in &open.exits {
            agg.merge(*key, stats);
        }
        for (key, run) in &open.runs {
            agg.merge_run(*key, run);
        }
        agg.unfinished = open.unfinished;
        agg
    }
}


fn access(s: &mut profiler_common::ThreadState, hw: bool, now: u64, t: Thread, kind: u8, addr: u64) -> Option<ExitRecord> {
    if hw {
        s.on_hw_detail(kind, addr);
        None
    } else {
        s.on_emulated_access(now, t, kind, addr)
    }
}

