//! The exits of one interval: the difference of two cumulative snapshots, per exit key.
//!
//! The in-kernel maps are never reset while a session runs (resetting would race with the
//! programs adding to them), so `top` subtracts the previous snapshot from the current one.
//! Counts, times and histogram buckets all subtract, so the interval's percentiles come from
//! its own histogram.
use std::collections::HashMap;

use profiler_common::{ExitKey, ExitStats};

use crate::model::{Meta, Profile};

/// `cur - prev`, key by key: the exits counted between the two snapshots. Keys with nothing
/// new are left out. The loss counters in `meta` are differences too; threads are `cur`'s.
pub fn between(prev: &Profile, cur: &Profile) -> Profile {
    let before: HashMap<ExitKey, &ExitStats> = prev.exits.iter().map(|e| (e.key(), &e.stats)).collect();
    let exits = cur
        .exits
        .iter()
        .filter_map(|e| {
            let mut d = e.clone();
            if let Some(p) = before.get(&e.key()) {
                d.stats = minus(&e.stats, p);
            }
            (d.stats.count > 0).then_some(d)
        })
        .collect();
    Profile { meta: meta_between(&prev.meta, &cur.meta), threads: cur.threads.clone(), exits, records: None, runs: None, records_file: None }
}

/// Saturating: the per-CPU values are read one CPU at a time while the programs keep adding,
/// so one read can see a count whose histogram bucket lands in the next read; a bucket must
/// not wrap below zero because of it.
fn minus(a: &ExitStats, b: &ExitStats) -> ExitStats {
    let mut d = ExitStats { count: a.count.saturating_sub(b.count), total_ns: a.total_ns.saturating_sub(b.total_ns), hist: a.hist };
    for (x, y) in d.hist.iter_mut().zip(b.hist.iter()) {
        *x = x.saturating_sub(*y);
    }
    d
}

fn meta_between(prev: &Meta, cur: &Meta) -> Meta {
    Meta {
        start_unix_ns: if prev.end_unix_ns != 0 { prev.end_unix_ns } else { cur.start_unix_ns },
        records_dropped: cur.records_dropped.saturating_sub(prev.records_dropped),
        exit_keys_full: cur.exit_keys_full.saturating_sub(prev.exit_keys_full),
        threads_full: cur.threads_full.saturating_sub(prev.threads_full),
        unfinished_exits: cur.unfinished_exits.saturating_sub(prev.unfinished_exits),
        ..cur.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Access, Direction, Exit, Isa, Reason};
    use profiler_common::{hist_bucket, HIST_BUCKETS};

    fn exit(rip: u64, times: &[u64]) -> Exit {
        let mut stats = ExitStats { count: 0, total_ns: 0, hist: [0; HIST_BUCKETS] };
        for t in times {
            stats.add(*t);
        }
        Exit {
            tgid: 7,
            tid: 8,
            vcpu: None,
            reason: Reason { isa: Isa::KvmExit, code: 2 },
            rip,
            access: Access::Port { dir: Direction::Out, port: 0x80 },
            caller: None,
            stats,
            stack: None,
        }
    }

    fn profile(exits: Vec<Exit>, keys_full: u64) -> Profile {
        let mut p = Profile { exits, ..Profile::default() };
        p.meta.exit_keys_full = keys_full;
        p.meta.end_unix_ns = 1;
        p
    }

    #[test]
    fn counts_times_and_buckets_subtract_per_key() {
        let prev = profile(vec![exit(0x10, &[1_000, 1_000]), exit(0x20, &[5_000])], 3);
        let cur = profile(vec![exit(0x10, &[1_000, 1_000, 1_000, 900_000]), exit(0x20, &[5_000]), exit(0x30, &[2_000])], 5);
        let d = between(&prev, &cur);
        // 0x20 had nothing new: left out; 0x30 is new: all of it.
        assert_eq!(d.exits.iter().map(|e| (e.rip, e.stats.count, e.stats.total_ns)).collect::<Vec<_>>(), vec![(0x10, 2, 901_000), (0x30, 1, 2_000)]);
        let h = &d.exits[0].stats.hist;
        assert_eq!((h[hist_bucket(1_000)], h[hist_bucket(900_000)]), (1, 1), "the interval's own histogram");
        assert_eq!(h.iter().sum::<u64>(), 2);
        assert_eq!(d.meta.exit_keys_full, 2, "loss counters are per interval");
    }

    #[test]
    fn a_bucket_read_early_does_not_wrap() {
        let mut prev = profile(vec![exit(0x10, &[1_000])], 0);
        prev.exits[0].stats.hist[hist_bucket(1_000)] = 2;
        let cur = profile(vec![exit(0x10, &[1_000, 1_000])], 0);
        let d = between(&prev, &cur);
        assert_eq!(d.exits[0].stats.hist.iter().sum::<u64>(), 0);
    }
}
