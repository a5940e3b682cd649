//! User-space side of the aggregation: merges per-CPU map values, charges exits replayed by
//! the importer through the shared state machine, and turns the result into a recording.
use std::collections::{BTreeMap, HashMap};

use profiler_common::runs::{RunKey, RunStats};
use profiler_common::{ExitKey, ExitRecord, ExitStats, Thread, ThreadState};

use super::exit::Exit;
use super::profile::{Meta, Profile, Record, Run, Runs, ThreadInfo};

#[derive(Debug, Default)]
pub struct Aggregate {
    pub exits: BTreeMap<ExitKey, ExitStats>,
    /// Every exit in order, when records were asked for.
    pub records: Option<Vec<ExitRecord>>,
    pub unfinished: u64,
    /// Run detection ([`profiler_common::runs`]): its max gap, when runs are collected.
    pub max_gap_ns: Option<u64>,
    pub runs: BTreeMap<RunKey, RunStats>,
    /// Runs the in-kernel `RUNS` map had no room for.
    pub runs_lost: u64,
}

impl Aggregate {
    pub fn new(keep_records: bool) -> Aggregate {
        Aggregate { records: keep_records.then(Vec::new), ..Aggregate::default() }
    }

    /// Charges one finished exit, exactly as the eBPF `charge` does.
    pub fn charge(&mut self, rec: Option<ExitRecord>) {
        let Some(rec) = rec else { return };
        self.exits.entry(rec.key).or_default().add(rec.duration_ns);
        if let Some(r) = &mut self.records {
            r.push(rec);
        }
    }

    /// Charges a finished exit of thread `s` and feeds it to the thread's run detection,
    /// exactly as the eBPF `charge_exit` does.
    pub fn charge_thread(&mut self, s: &mut ThreadState, rec: Option<ExitRecord>) {
        let Some(r) = rec else { return };
        self.charge(rec);
        self.detect_runs(s, &r);
    }

    /// Feeds a finished exit (charged elsewhere) to its thread's run detection.
    pub fn detect_runs(&mut self, s: &mut ThreadState, r: &ExitRecord) {
        if let Some(gap) = self.max_gap_ns {
            let runs = &mut self.runs;
            s.run.on_exit(r, gap, |k, v| add_run(runs, k, v));
        }
    }

    /// Adds one run signature's per-CPU value (or one finished run).
    pub fn merge_run(&mut self, key: RunKey, stats: &RunStats) {
        add_run(&mut self.runs, &key, stats);
    }

    pub fn merge(&mut self, key: ExitKey, stats: &ExitStats) {
        self.exits.entry(key).or_default().merge(stats);
    }

    /// Charges exits still open at the end: their time is what was measured before the
    /// thread re-entered the guest, or 0 if it never did (e.g. the last HLT).
    pub fn finish_threads<'a>(&mut self, states: impl IntoIterator<Item = &'a mut ThreadState>) {
        for s in states {
            let start = s.pending.start_ns;
            if let Some(rec) = s.take_pending(start) {
                self.unfinished += 1;
                self.charge_thread(s, Some(rec));
            }
            if self.max_gap_ns.is_some() {
                let runs = &mut self.runs;
                s.run.finish(|k, v| add_run(runs, k, v));
            }
        }
    }

    /// The profile of these exits. Keys no kvmprof program writes (a bug, or a foreign map)
    /// are left out and counted in the returned number.
    pub fn into_profile(self, mut meta: Meta, threads: BTreeMap<u32, ThreadInfo>) -> (Profile, usize) {
        meta.unfinished_exits = self.unfinished;
        let mut index = HashMap::new();
        let mut exits = Vec::with_capacity(self.exits.len());
        let mut undecodable = 0;
        for (key, stats) in &self.exits {
            match Exit::from_key(key, *stats) {
                Ok(e) => {
                    index.insert(*key, exits.len());
                    exits.push(e);
                }
                Err(_) => undecodable += 1,
            }
        }
        let records = self.records.map(|rs| {
            rs.iter().filter_map(|r| index.get(&r.key).map(|i| Record { start_ns: r.start_ns, duration_ns: r.duration_ns, exit: *i })).collect()
        });
        let runs = self.max_gap_ns.map(|max_gap_ns| Runs {
            max_gap_ns,
            lost: self.runs_lost,
            list: self.runs.iter().filter(|(_, v)| v.occurrences > 0).map(|(k, v)| Run::from_stats(k, v)).collect(),
        });
        (Profile { meta, threads, exits, records, runs, records_file: None }, undecodable)
    }
}

fn add_run(runs: &mut BTreeMap<RunKey, RunStats>, key: &RunKey, stats: &RunStats) {
    let e = runs.entry(*key).or_default();
    // A per-CPU slot zero-filled by another CPU's insert has occurrences but no accesses
    // (kind 0, never a real run's kind): take them from the slot that has them.
    if e.kind == 0 && stats.kind != 0 {
        e.accesses = stats.accesses;
        e.kind = stats.kind;
    }
    e.occurrences += stats.occurrences;
    e.total_ns += stats.total_ns;
}

/// Per-thread state machines for replaying recorded events in user space.
#[derive(Debug, Default)]
pub struct Threads {
    pub states: HashMap<u32, ThreadState, foldhash::fast::RandomState>,
}

impl Threads {
    pub fn get(&mut self, t: Thread) -> &mut ThreadState {
        self.states.entry(t.tid).or_default()
    }
}
