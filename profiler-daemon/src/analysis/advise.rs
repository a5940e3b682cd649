//! `kvmprof advise`: batching candidates from the runs of successive I/O exits a recording
//! holds (see [`profiler_common::runs`]), ranked by the exits batching them would save.
//!
//! A run of length L that occurred K times cost L·K exits. Queued in guest memory and handed to
//! the VMM in one exit (a doorbell, as tinyvmm's `--batch-pio` does), it would cost K:
//! **exits saved = (L − 1)·K**. Time saved = the measured time of the run's exits minus one
//! doorbell exit per occurrence, a doorbell estimated at the run's own mean exit time.
//! A run of reads is still listed, flagged `has_reads`: the guest usually needs a read's value
//! before its next access, so a plain queue cannot carry it.
use std::collections::BTreeMap;

use profiler_common::runs::{hash_step, RunAccess as CommonAccess, HASH_START};

use crate::model::{Direction, Profile, Run};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdviseOptions {
    /// Only runs at least this long.
    pub min_run: u32,
}

impl Default for AdviseOptions {
    fn default() -> Self {
        AdviseOptions { min_run: 2 }
    }
}

/// Where one access of a run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Port(u16),
    Gpa(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessRow {
    pub rip: u64,
    pub direction: Direction,
    pub target: Target,
    pub function: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The guest functions of the accesses, in order of first appearance (a RIP in hex when
    /// it has no symbol).
    pub functions: Vec<String>,
    /// The first accesses of the run, in order (all of them up to `RUN_ACCESSES`).
    pub accesses: Vec<AccessRow>,
    /// The whole run is its first access repeated (checked against the signature hash, so
    /// also for runs longer than the accesses kept).
    pub repeats_one_access: bool,
    pub run_length: u32,
    pub occurrences: u64,
    pub exits: u64,
    pub exits_saved: u64,
    pub time_ns: u64,
    pub time_saved_ns: u64,
    pub has_reads: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Advice {
    pub max_gap_ns: u64,
    pub total_exits: u64,
    /// Exits that lie in runs (of any length ≥ 2).
    pub exits_in_runs: u64,
    pub runs_lost: u64,
    pub candidates: Vec<Candidate>,
    /// Per guest function: its exits and how many of them lie in runs, most exits first.
    pub functions: Vec<FunctionRuns>,
    /// Exits in runs that cannot be placed in a function: accesses past the kept
    /// `RUN_ACCESSES` of a run that is not one access repeated.
    pub exits_in_runs_unplaced: u64,
}

/// How much of a function's exit count lies in runs (what batching could address).
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionRuns {
    /// The function, or the RIP in hex without symbols.
    pub function: String,
    pub exits: u64,
    pub exits_in_runs: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdviseError {
    #[error("this recording has no run data (it was made by a kvmprof without run detection): record it again")]
    NoRunData,
}

/// The candidates of `profile`, best first (most exits saved, then most time saved).
pub fn build(profile: &Profile, opts: AdviseOptions, resolve: &dyn Fn(u64) -> Option<String>) -> Result<Advice, AdviseError> {
    let runs = profile.runs.as_ref().ok_or(AdviseError::NoRunData)?;
    // Several VMs (or one signature in several processes) merge by signature.
    let mut merged: BTreeMap<(u64, u32, u8), Run> = BTreeMap::new();
    for r in &runs.list {
        merged
            .entry((r.hash, r.length, r.kind))
            .and_modify(|m| {
                m.occurrences += r.occurrences;
                m.total_ns += r.total_ns;
            })
            .or_insert_with(|| r.clone());
    }
    let exits_in_runs = merged.values().map(|r| r.length as u64 * r.occurrences).sum();
    let mut candidates: Vec<Candidate> = merged.values().filter(|r| r.length >= opts.min_run.max(2)).map(|r| candidate(r, resolve)).collect();
    candidates.sort_by(|a, b| b.exits_saved.cmp(&a.exits_saved).then(b.time_saved_ns.cmp(&a.time_saved_ns)).then(a.accesses.first().map(|x| x.rip).cmp(&b.accesses.first().map(|x| x.rip))));
    let (functions, exits_in_runs_unplaced) = by_function(profile, &merged, resolve);
    Ok(Advice { max_gap_ns: runs.max_gap_ns, total_exits: profile.total_exits(), exits_in_runs, runs_lost: runs.lost, candidates, functions, exits_in_runs_unplaced })
}

/// Exits per function and those of them in runs: a run's kept accesses are placed at their
/// RIPs (K exits each); a run that is one access repeated places all L·K at that RIP.
fn by_function(profile: &Profile, runs: &BTreeMap<(u64, u32, u8), Run>, resolve: &dyn Fn(u64) -> Option<String>) -> (Vec<FunctionRuns>, u64) {
    let name = |rip: u64| resolve(rip).unwrap_or_else(|| crate::render::hex(rip));
    let mut f: BTreeMap<String, FunctionRuns> = BTreeMap::new();
    for e in &profile.exits {
        let n = name(e.rip);
        f.entry(n.clone()).or_insert_with(|| FunctionRuns { function: n, exits: 0, exits_in_runs: 0 }).exits += e.stats.count;
    }
    let mut unplaced = 0;
    for r in runs.values() {
        let mut place = |rip: u64, n: u64| {
            let fname = name(rip);
            f.entry(fname.clone()).or_insert_with(|| FunctionRuns { function: fname, exits: 0, exits_in_runs: 0 }).exits_in_runs += n;
        };
        let c = candidate(r, &|_| None);
        if c.repeats_one_access {
            place(r.accesses[0].rip, r.length as u64 * r.occurrences);
        } else {
            for a in &r.accesses {
                place(a.rip, r.occurrences);
            }
            unplaced += (r.length as u64).saturating_sub(r.accesses.len() as u64) * r.occurrences;
        }
    }
    let mut v: Vec<FunctionRuns> = f.into_values().collect();
    v.sort_by(|a, b| b.exits.cmp(&a.exits).then(a.function.cmp(&b.function)));
    (v, unplaced)
}

fn candidate(r: &Run, resolve: &dyn Fn(u64) -> Option<String>) -> Candidate {
    let direction = match r.kind {
        profiler_common::detail::PORT_IN | profiler_common::detail::MMIO_READ => Direction::In,
        _ => Direction::Out,
    };
    let accesses: Vec<AccessRow> = r
        .accesses
        .iter()
        .map(|a| AccessRow {
            rip: a.rip,
            direction,
            target: if r.is_port() { Target::Port(a.addr as u16) } else { Target::Gpa(a.addr) },
            function: resolve(a.rip),
        })
        .collect();
    let mut functions: Vec<String> = Vec::new();
    for a in &accesses {
        let f = a.function.clone().unwrap_or_else(|| crate::render::hex(a.rip));
        if !functions.contains(&f) {
            functions.push(f);
        }
    }
    let repeats_one_access = r.accesses.first().is_some_and(|first| {
        let a = CommonAccess::new(first.rip, r.kind, first.addr);
        (0..r.length).fold(HASH_START, |h, _| hash_step(h, &a)) == r.hash
    });
    let exits = r.length as u64 * r.occurrences;
    let doorbells_ns = if exits == 0 { 0 } else { (r.total_ns as u128 * r.occurrences as u128 / exits as u128) as u64 };
    Candidate {
        functions,
        accesses,
        repeats_one_access,
        run_length: r.length,
        occurrences: r.occurrences,
        exits,
        exits_saved: (r.length as u64 - 1) * r.occurrences,
        time_ns: r.total_ns,
        time_saved_ns: r.total_ns.saturating_sub(doorbells_ns),
        has_reads: r.has_reads(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RunAccess, Runs};
    use profiler_common::detail;

    fn run(accesses: &[(u64, u64)], length: u32, k: u64, ns: u64, kind: u8) -> Run {
        let mut h = HASH_START;
        for i in 0..length as usize {
            let (rip, addr) = accesses[i.min(accesses.len() - 1)];
            h = hash_step(h, &CommonAccess::new(rip, kind, addr));
        }
        Run {
            tgid: 1,
            length,
            hash: h,
            occurrences: k,
            total_ns: ns,
            kind,
            accesses: accesses.iter().take(length as usize).map(|&(rip, addr)| RunAccess { rip, addr }).collect(),
        }
    }

    #[test]
    fn ranks_by_exits_saved_and_prices_one_doorbell_per_run() {
        let regs: Vec<(u64, u64)> = (0..12).map(|i| (0x100 + i, 0x1f1 + (i % 6))).collect();
        let p = Profile {
            runs: Some(Runs {
                max_gap_ns: 50_000,
                lost: 0,
                list: vec![run(&regs, 12, 100, 12_000_000, detail::PORT_OUT), run(&[(0x451, 0x1f0)], 256, 100, 25_600_000, detail::PORT_OUT), run(&[(0x22, 0x1f7), (0x23, 0x1f7)], 2, 5, 100, detail::PORT_IN)],
            }),
            ..Profile::default()
        };
        let a = build(&p, AdviseOptions::default(), &|_| None).unwrap();
        let c = &a.candidates;
        assert_eq!(c.len(), 3);
        assert_eq!((c[0].run_length, c[0].exits, c[0].exits_saved, c[0].time_saved_ns), (256, 25_600, 25_500, 25_600_000 - 100_000));
        assert!(c[0].repeats_one_access);
        assert_eq!((c[1].run_length, c[1].exits_saved, c[1].time_saved_ns), (12, 1_100, 11_000_000));
        assert!(!c[1].repeats_one_access && !c[1].has_reads);
        assert!(c[2].has_reads);
        assert_eq!(a.exits_in_runs, 25_600 + 1_200 + 10);
        let at = |f: &str| a.functions.iter().find(|x| x.function == f).map(|x| x.exits_in_runs);
        assert_eq!((at("0x451"), at("0x100"), at("0x22"), a.exits_in_runs_unplaced), (Some(25_600), Some(100), Some(5), 0));
        let only_long = build(&p, AdviseOptions { min_run: 13 }, &|_| None).unwrap();
        assert_eq!(only_long.candidates.len(), 1);
        assert_eq!(build(&Profile::default(), AdviseOptions::default(), &|_| None), Err(AdviseError::NoRunData));
    }
}
