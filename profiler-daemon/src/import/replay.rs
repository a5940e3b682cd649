//! Events to exits: the replay stage of the import, one thread, in trace order, through the
//! same per-thread state machine the eBPF programs run.
use std::collections::HashMap;

use profiler_common::{ExitRecord, Thread, ThreadState};

use super::parse::{Ev, Parsed};
use super::sites::Sites;
use crate::model::aggregate::Aggregate;
use crate::model::record_stream::StreamWriter;

/// The per-thread state machines, the aggregate and the record stream.
pub(super) struct Machine<'s> {
    hw: bool,
    threads: Threads,
    pub agg: Aggregate,
    /// Exit sites numbered in order of appearance (the record stream's site numbers), and
    /// their exits charged while reading (merged into `agg` at the end).
    sites: Sites,
    pub records: Option<&'s mut StreamWriter>,
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
        Machine { hw, threads: Threads::new(), agg, sites: Sites::default(), records }
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
            let site = self.sites.charge(&rec.key, rec.duration_ns);
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
        for (key, stats) in self.sites.stats() {
            agg.merge(key, &stats);
        }
        let mut open = Aggregate::new(true);
        open.max_gap_ns = agg.max_gap_ns;
        open.finish_threads(self.threads.states.iter_mut());
        for rec in open.records.take().unwrap_or_default() {
            let site = self.sites.site(&rec.key);
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

