//! One traced VM: its label, its guest symbols, and its series computed from its exits.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use profiler_common::HIST_BUCKETS;
use symbolizer::Symbolizer;

use super::discovery::ProcId;
use super::metrics::{SymbolState, VmSeries};
use crate::model::{Access, Direction, Exit};

/// The function series name of everything outside a VM's top N.
pub const OTHER: &str = "[other]";
/// The function name of a RIP the VM's symbols do not cover.
pub const UNKNOWN: &str = "[unknown]";

pub struct Vm {
    pub id: ProcId,
    pub label: String,
    pub symbols: SymbolState,
    pub symbolizer: Option<Arc<Symbolizer>>,
    /// vCPU index of each thread seen (from its name), kept for the VM's final series after
    /// its threads are gone.
    pub vcpus: HashMap<u32, Option<u32>>,
    functions: TopFunctions,
    names: HashMap<u64, Arc<str>>,
    /// Set on the poll that saw the process gone: its last exits, read once; the series stay
    /// for that poll and are removed on the next.
    pub final_exits: Option<Vec<Exit>>,
}

impl Vm {
    pub fn new(id: ProcId, label: String) -> Vm {
        Vm {
            id,
            label,
            symbols: SymbolState::None,
            symbolizer: None,
            vcpus: HashMap::new(),
            functions: TopFunctions::default(),
            names: HashMap::new(),
            final_exits: None,
        }
    }

    /// New symbols (or none): the function series start over.
    pub fn set_symbols(&mut self, state: SymbolState, sym: Option<Arc<Symbolizer>>) {
        let changed = match (&self.symbolizer, &sym) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
            (None, None) => false,
            _ => true,
        };
        if changed {
            self.functions = TopFunctions::default();
            self.names.clear();
        }
        self.symbolizer = sym;
        self.symbols = state;
    }

    /// The guest function of `rip`: `None` without symbols, `[unknown]` outside them.
    pub fn function(&mut self, rip: u64) -> Option<Arc<str>> {
        let sym = self.symbolizer.as_ref()?;
        Some(self.names.entry(rip).or_insert_with(|| sym.function_name(rip).map_or_else(|| Arc::from(UNKNOWN), Arc::from)).clone())
    }

    pub fn vcpu_label(&self, e: &Exit) -> String {
        match e.vcpu.or_else(|| self.vcpus.get(&e.tid).copied().flatten()) {
            Some(v) => v.to_string(),
            None => "unknown".into(),
        }
    }

    /// This VM's series from its exits (cumulative since the daemon attached).
    pub fn series(&mut self, exits: &[&Exit], top_n: usize, le_of: &[usize; HIST_BUCKETS]) -> VmSeries {
        let mut s = VmSeries {
            label: self.label.clone(),
            pid: self.id.pid,
            symbols: self.symbols,
            exits: BTreeMap::new(),
            durations: BTreeMap::new(),
            pio: BTreeMap::new(),
            mmio: [0, 0],
            functions: Vec::new(),
        };
        let mut by_function: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
        let (mut total, mut total_ns) = (0, 0);
        for e in exits {
            let (n, ns) = (e.stats.count, e.stats.total_ns);
            let reason = e.reason.name();
            *s.exits.entry((self.vcpu_label(e), reason.clone())).or_default() += n;
            s.durations.entry(reason).or_default().add(n, ns, &e.stats.hist, le_of);
            match e.access {
                Access::Port { dir, port } => *s.pio.entry((port, dir)).or_default() += n,
                Access::Mmio { dir, .. } => s.mmio[(dir == Direction::Out) as usize] += n,
                Access::None => {}
            }
            if let Some(f) = self.function(e.rip) {
                let v = by_function.entry(f).or_default();
                v.0 += n;
                v.1 += ns;
            }
            total += n;
            total_ns += ns;
        }
        if self.symbolizer.is_some() {
            s.functions = self.functions.update(&by_function, (total, total_ns), top_n);
        }
        s
    }
}

/// Which functions of a VM have their own series. Counters must never go backwards, yet the
/// top N changes. A function that gets a series takes its whole count with it, except what
/// `[other]` already showed: `[other]` never shrinks, so the part of a newcomer's count that
/// was published under `[other]` stays there (its series starts from the rest). One that
/// leaves hands its count to `[other]`. So every series only grows and, per VM, they always
/// sum to the VM's total. Functions stay while they are in the top 2N, so ranks that flicker
/// do not churn series; at most N have series.
#[derive(Debug, Default)]
pub struct TopFunctions {
    /// Function → the (exits, ns) it left in `[other]` when it got its series.
    base: HashMap<Arc<str>, (u64, u64)>,
    /// `[other]` as last published.
    other: (u64, u64),
}

impl TopFunctions {
    pub fn update(&mut self, cur: &HashMap<Arc<str>, (u64, u64)>, total: (u64, u64), n: usize) -> Vec<(String, u64, u64)> {
        let get = |f: &Arc<str>| cur.get(f).copied().unwrap_or_default();
        let mut ranked: Vec<(&Arc<str>, &(u64, u64))> = cur.iter().collect();
        ranked.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(b.1 .1.cmp(&a.1 .1)).then(a.0.cmp(b.0)));
        let keep: std::collections::HashSet<&str> = ranked.iter().take(2 * n).map(|(f, _)| &***f).collect();
        self.base.retain(|f, _| keep.contains(&**f));
        let room = n.saturating_sub(self.base.len());
        let mut new: Vec<Arc<str>> = ranked.iter().take(n).map(|(f, _)| (*f).clone()).filter(|f| !self.base.contains_key(f)).take(room).collect();
        // `[other]` if the newcomers took their whole counts; what it would lose below its
        // published value stays in it, taken from the smallest newcomers first.
        let kept = self.base.iter().fold((0, 0), |a, (f, b)| {
            let c = get(f);
            (a.0 + c.0.saturating_sub(b.0), a.1 + c.1.saturating_sub(b.1))
        });
        let incoming = new.iter().fold((0, 0), |a, f| (a.0 + get(f).0, a.1 + get(f).1));
        let other_whole = (total.0.saturating_sub(kept.0 + incoming.0), total.1.saturating_sub(kept.1 + incoming.1));
        let mut deficit = (self.other.0.saturating_sub(other_whole.0), self.other.1.saturating_sub(other_whole.1));
        new.sort_by_key(|f| get(f));
        for f in new {
            let c = get(&f);
            let b = (c.0.min(deficit.0), c.1.min(deficit.1));
            deficit = (deficit.0 - b.0, deficit.1 - b.1);
            self.base.insert(f, b);
        }
        let mut out: Vec<(String, u64, u64)> = self
            .base
            .iter()
            .map(|(f, b)| {
                let c = get(f);
                (f.to_string(), c.0.saturating_sub(b.0), c.1.saturating_sub(b.1))
            })
            .collect();
        let (n_in, ns_in) = out.iter().fold((0, 0), |a, (_, n, ns)| (a.0 + n, a.1 + ns));
        out.sort();
        self.other = (total.0.saturating_sub(n_in), total.1.saturating_sub(ns_in));
        out.push((OTHER.to_string(), self.other.0, self.other.1));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(v: &[(&str, u64)]) -> HashMap<Arc<str>, (u64, u64)> {
        v.iter().map(|(f, n)| (Arc::from(*f), (*n, *n * 10))).collect()
    }

    fn get(out: &[(String, u64, u64)], f: &str) -> Option<u64> {
        out.iter().find(|(n, _, _)| n == f).map(|(_, c, _)| *c)
    }

    #[test]
    fn series_never_go_backwards_and_sum_to_the_total() {
        let mut t = TopFunctions::default();
        let mut prev: HashMap<String, u64> = HashMap::new();
        // a leads, then c overtakes everyone: c enters, b (now third of n=2... kept in 2N).
        let steps = [
            vec![("a", 10), ("b", 5), ("c", 1)],
            vec![("a", 20), ("b", 6), ("c", 30)],
            vec![("a", 21), ("b", 6), ("c", 90), ("d", 80), ("e", 70)],
            vec![("a", 21), ("b", 6), ("c", 100), ("d", 200), ("e", 300)],
        ];
        for step in steps {
            let c = cur(&step);
            let total: u64 = step.iter().map(|(_, n)| n).sum();
            let out = t.update(&c, (total, total * 10), 2);
            assert!(out.len() <= 3);
            assert_eq!(out.iter().map(|(_, n, _)| n).sum::<u64>(), total, "{out:?}");
            for (f, n, _) in &out {
                if let Some(p) = prev.get(f) {
                    assert!(n >= p, "{f} went from {p} to {n}: {out:?}");
                }
            }
            // A series that disappears and comes back is a new series: forget its history.
            prev = out.iter().map(|(f, n, _)| (f.clone(), *n)).collect();
        }
    }

    #[test]
    fn newcomers_take_their_whole_count_while_other_has_not_shown_it() {
        let mut t = TopFunctions::default();
        t.update(&cur(&[("boot", 10)]), (10, 100), 3);
        // ide appears between two polls: a free slot and [other] at 0, so it starts whole.
        let out = t.update(&cur(&[("boot", 10), ("ide", 500)]), (510, 5100), 3);
        assert_eq!(get(&out, "ide"), Some(500));
        assert_eq!(get(&out, OTHER), Some(0));
        // Full: a fourth function goes to [other]; when a slot frees, [other] keeps what it showed.
        let out = t.update(&cur(&[("boot", 10), ("ide", 500), ("a", 20), ("b", 5)]), (535, 5350), 3);
        assert_eq!(get(&out, "b"), None);
        assert_eq!(get(&out, OTHER), Some(5));
    }

    #[test]
    fn first_poll_series_start_whole() {
        let mut t = TopFunctions::default();
        let out = t.update(&cur(&[("a", 10), ("b", 5), ("c", 1)]), (16, 160), 2);
        assert_eq!(get(&out, "a"), Some(10));
        assert_eq!(get(&out, "b"), Some(5));
        assert_eq!(get(&out, OTHER), Some(1));
    }
}
