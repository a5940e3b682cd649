//! User-space side of the aggregation: merges per-CPU map values, charges exits replayed by
//! the importer through the shared state machine, and turns the result into a recording.
use std::collections::{BTreeMap, HashMap};

use profiler_common::{ExitKey, ExitRecord, ExitStats, Thread, ThreadState};

use crate::recording::{ExitRow, Meta, Recording, ThreadInfo};

#[derive(Debug, Default)]
pub struct Aggregate {
    pub exits: BTreeMap<ExitKey, ExitStats>,
    /// Every exit in order, when records were asked for.
    pub records: Option<Vec<ExitRecord>>,
    pub unfinished: u64,
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
                self.charge(Some(rec));
            }
        }
    }

    pub fn into_recording(self, mut meta: Meta, threads: BTreeMap<u32, ThreadInfo>) -> Recording {
        meta.unfinished_exits = self.unfinished;
        let mut rec = Recording::new(meta);
        rec.threads = threads;
        let mut index = HashMap::new();
        for (i, (key, stats)) in self.exits.iter().enumerate() {
            index.insert(*key, i as u64);
            rec.exits.push(ExitRow::new(key, stats));
        }
        rec.records = self.records.map(|rs| {
            rs.iter().filter_map(|r| index.get(&r.key).map(|i| [r.start_ns, r.duration_ns, *i])).collect()
        });
        rec
    }
}

/// Per-thread state machines for replaying recorded events in user space.
#[derive(Debug, Default)]
pub struct Threads {
    pub states: HashMap<u32, ThreadState>,
}

impl Threads {
    pub fn get(&mut self, t: Thread) -> &mut ThreadState {
        self.states.entry(t.tid).or_default()
    }
}
