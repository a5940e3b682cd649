//! One interval of `top`: its exits (a snapshot delta) and its length, and everything the
//! view shows computed from them as numbers: rates, rows grouped and sorted, and a function's
//! RIPs and callers. Grouping and percentiles are `analysis::report`'s.
use std::collections::{BTreeMap, BTreeSet};

use super::{delta, SortBy};
use crate::analysis::callers::caller_function;
use crate::analysis::report::{self, GroupBy, Row};
use crate::model::Profile;

#[derive(Debug, Clone)]
pub struct Interval {
    /// The exits counted in the interval (with their own histograms and loss counters).
    pub exits: Profile,
    /// Its measured length in seconds (what rates divide by, not the nominal interval).
    pub secs: f64,
    /// Its end, in seconds since tracing started.
    pub at_secs: f64,
    /// 1 for the first interval.
    pub index: u64,
    /// VMM processes that exited in the interval or still run a traced thread at its end.
    pub vms: usize,
}

/// A function's exits by the function that called it (the paper's Table 3, for one function).
#[derive(Debug, Clone, PartialEq)]
pub struct CallerRow {
    /// `None`: the caller could not be read, or has no symbol.
    pub function: Option<String>,
    pub count: u64,
    pub time_ns: u64,
}

pub type Resolve<'a> = &'a dyn Fn(u64) -> Option<String>;

impl Interval {
    /// The interval between two cumulative snapshots, `secs` apart.
    pub fn between(prev: &Profile, cur: &Profile, secs: f64, at_secs: f64, index: u64) -> Interval {
        let exits = delta::between(prev, cur);
        let running = cur.threads.values().filter(|t| !t.ended).map(|t| t.tgid);
        let vms = running.chain(exits.exits.iter().map(|e| e.tgid)).collect::<BTreeSet<_>>().len();
        Interval { exits, secs, at_secs, index, vms }
    }

    /// `n` per second of this interval.
    pub fn rate(&self, n: u64) -> f64 {
        if self.secs > 0.0 {
            n as f64 / self.secs
        } else {
            0.0
        }
    }

    pub fn exits_per_s(&self) -> f64 {
        self.rate(self.exits.total_exits())
    }

    /// Time spent in exits per second of wall time, in % of one CPU (over 100 with several
    /// vCPUs exiting at once).
    pub fn cpu_percent(&self) -> f64 {
        self.rate(self.exits.total_time_ns()) / 1e9 * 100.0
    }

    /// Exits and thread events the kernel side lost in this interval (maps full, records
    /// the ring buffer had no room for).
    pub fn drops(&self) -> u64 {
        let m = &self.exits.meta;
        m.exit_keys_full + m.threads_full + m.records_dropped
    }

    /// One row per group, hottest first by `sort`.
    pub fn rows(&self, by: GroupBy, sort: SortBy, resolve: Resolve) -> Vec<Row> {
        let mut rows = report::build(&self.exits, by, resolve).rows;
        sort_rows(&mut rows, sort);
        rows
    }

    /// The RIPs of `function` that exited in this interval; shares are of the function's time.
    pub fn function_rips(&self, function: &str, sort: SortBy, resolve: Resolve) -> Vec<Row> {
        let mine = self.exits.filtered(|e| resolve(e.rip).as_deref() == Some(function));
        let mut rows = report::build(&mine, GroupBy::Rip, resolve).rows;
        sort_rows(&mut rows, sort);
        rows
    }

    /// `function`'s exits in this interval by calling function.
    pub fn callers_of(&self, function: &str, sort: SortBy, resolve: Resolve) -> Vec<CallerRow> {
        let mut by_caller: BTreeMap<Option<String>, CallerRow> = BTreeMap::new();
        for e in self.exits.exits.iter().filter(|e| resolve(e.rip).as_deref() == Some(function)) {
            let name = e.caller.and_then(|c| caller_function(c, resolve));
            let row = by_caller.entry(name.clone()).or_insert(CallerRow { function: name, count: 0, time_ns: 0 });
            row.count += e.stats.count;
            row.time_ns += e.stats.total_ns;
        }
        let mut rows: Vec<CallerRow> = by_caller.into_values().collect();
        rows.sort_by(|a, b| match sort {
            SortBy::Count => b.count.cmp(&a.count).then(b.time_ns.cmp(&a.time_ns)),
            SortBy::Time => b.time_ns.cmp(&a.time_ns).then(b.count.cmp(&a.count)),
        });
        rows
    }
}

/// `report::build` orders by count; ties and the time order are settled here, the RIP last
/// so that equal rows do not swap places between refreshes.
fn sort_rows(rows: &mut [Row], sort: SortBy) {
    rows.sort_by(|a, b| {
        let primary = match sort {
            SortBy::Count => b.count.cmp(&a.count).then(b.time_ns.cmp(&a.time_ns)),
            SortBy::Time => b.time_ns.cmp(&a.time_ns).then(b.count.cmp(&a.count)),
        };
        primary.then(a.rip.cmp(&b.rip)).then(a.function.cmp(&b.function))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Access, Direction, Exit, Isa, Reason};
    use profiler_common::{ExitStats, HIST_BUCKETS};

    fn exit(rip: u64, caller: Option<u64>, n: u64, each_ns: u64) -> Exit {
        let mut stats = ExitStats { count: 0, total_ns: 0, hist: [0; HIST_BUCKETS] };
        for _ in 0..n {
            stats.add(each_ns);
        }
        Exit {
            tgid: 1,
            tid: 2,
            vcpu: None,
            reason: Reason { isa: Isa::KvmExit, code: 2 },
            rip,
            access: Access::Port { dir: Direction::Out, port: 0x80 },
            caller,
            stats,
            stack: None,
        }
    }

    /// Functions: 0x100..0x1ff is `f`, 0x200..0x2ff is `g`, 0x300.. `main`.
    fn resolve(rip: u64) -> Option<String> {
        match rip {
            0x100..=0x1ff => Some("f".into()),
            0x200..=0x2ff => Some("g".into()),
            0x300..=0x3ff => Some("main".into()),
            _ => None,
        }
    }

    fn interval() -> Interval {
        let cur = Profile { exits: vec![exit(0x110, Some(0x301), 400, 1_000), exit(0x120, None, 100, 1_000), exit(0x210, Some(0x302), 50, 100_000)], ..Profile::default() };
        Interval::between(&Profile::default(), &cur, 0.5, 0.5, 1)
    }

    #[test]
    fn rates_are_per_second_of_the_measured_interval() {
        let iv = interval();
        assert_eq!(iv.exits_per_s(), 1100.0);
        // 0.5 ms + 5 ms of exits in 0.5 s: 1.1% of one CPU.
        assert!((iv.cpu_percent() - 1.1).abs() < 1e-9, "{}", iv.cpu_percent());
    }

    #[test]
    fn rows_sort_by_count_or_time() {
        let iv = interval();
        let names = |s| iv.rows(GroupBy::Function, s, &resolve).iter().map(|r| r.function.clone().unwrap()).collect::<Vec<_>>();
        assert_eq!(names(SortBy::Count), ["f", "g"]);
        assert_eq!(names(SortBy::Time), ["g", "f"]);
    }

    #[test]
    fn a_functions_rips_and_callers() {
        let iv = interval();
        let rips: Vec<_> = iv.function_rips("f", SortBy::Count, &resolve).iter().map(|r| (r.rip, r.count)).collect();
        assert_eq!(rips, [(Some(0x110), 400), (Some(0x120), 100)]);
        let callers = iv.callers_of("f", SortBy::Count, &resolve);
        assert_eq!(callers, [CallerRow { function: Some("main".into()), count: 400, time_ns: 400_000 }, CallerRow { function: None, count: 100, time_ns: 100_000 }]);
    }
}
