//! Events to exits: the replay stage of the import, one thread, in trace order, through the
//! same per-thread state machine the eBPF programs run.
use std::collections::HashMap;

use profiler_common::{ExitKey, ExitRecord, ExitStats, Thread};

use super::parse::{Ev, Parsed};
use crate::model::aggregate::{Aggregate, Threads};
use crate::model::record_stream::StreamWriter;

/// The per-thread state machines, the aggregate and the record stream.
pub(super) struct Machine<'s> {
    hw: bool,
    threads: Threads,
    pub agg: Aggregate,
    /// Exit sites numbered in order of appearance (the record stream's site numbers), and
    /// their exits charged while reading (merged into `agg` at the end): one lookup per exit
    /// in a hash map with a fast hasher, not two in ordered maps.
    sites: HashMap<ExitKey, u32, foldhash::fast::RandomState>,
    stats: Vec<ExitStats>,
    pub records: Option<&'s mut StreamWriter>,
}

impl<'s> Machine<'s> {
    pub fn new(hw: bool, agg: Aggregate, records: Option<&'s mut StreamWriter>) -> Machine<'s> {
        Machine { hw, threads: Threads::default(), agg, sites: HashMap::default(), stats: Vec::new(), records }
    }

    /// The exit's site number, numbering a new site.
    fn site(&mut self, key: &ExitKey) -> u32 {
        let next = self.stats.len() as u32;
        let site = *self.sites.entry(*key).or_insert(next);
        if site == next {
            self.stats.push(ExitStats::default());
        }
        site
    }

    /// Replays one event through its thread's state machine, exactly as the eBPF programs
    /// would; a finished exit is charged and streamed.
    pub fn apply(&mut self, p: &Parsed) {
        let (t, now) = (p.t, p.ts);
        let s = self.threads.get(t);
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
            self.stats[site as usize].add(rec.duration_ns);
            if let Some(w) = &mut self.records {
                w.push_site(site, &rec);
            }
            self.agg.detect_runs(self.threads.get(t), &rec);
        }
    }

    /// The aggregate of every exit, with the exits still open at the end charged as `record`
    /// charges them (and streamed after the others).
    pub fn finish(&mut self) -> Aggregate {
        let mut agg = std::mem::take(&mut self.agg);
        for (key, site) in &self.sites {
            agg.merge(*key, &self.stats[*site as usize]);
        }
        let mut open = Aggregate::new(true);
        open.max_gap_ns = agg.max_gap_ns;
        open.finish_threads(self.threads.states.values_mut());
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

