//! `GET /debug/pprof/exits?seconds=N`: the exits of a window as a pprof profile.
//!
//! The collector takes a snapshot when the request arrives and another N seconds later; the
//! profile is their difference by stack (caller → function → reason, `vm` as a sample
//! label), named with the same symbols as the `/metrics` function series. VMs that end within
//! the window have their keys deleted from the maps, so their last totals are kept aside
//! ([`Retired`]) and added to the end of every window open when they ended.
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::vm::Vm;
use crate::model::Exit;
use crate::render::pprof::{self, StackKey};
use crate::render::hex;

pub type StackTotals = HashMap<StackKey, (u64, u64)>;

/// Longest window a request may ask for.
pub const MAX_WINDOW: Duration = Duration::from_secs(600);
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// The start of a window: the totals then, and where the list of retired VMs stood.
pub struct WindowMark {
    pub id: u64,
    pub totals: StackTotals,
    pub retired_seq: u64,
    pub at: Instant,
    pub unix_ns: u64,
}

/// Adds a VM's exits to `totals` under its stacks.
pub fn add_exits(totals: &mut StackTotals, vm: &mut Vm, exits: &[&Exit]) {
    for e in exits {
        let function = vm.function(e.rip).map_or_else(|| hex(e.rip), |f| f.to_string());
        let caller = e.caller.map(|c| c.checked_sub(1).and_then(|a| vm.function(a)).map_or_else(|| hex(c), |f| f.to_string()));
        let key = StackKey { frames: pprof::stack(caller, function, e.reason.name()), labels: vec![("vm".into(), vm.label.clone())] };
        let v = totals.entry(key).or_default();
        v.0 += e.stats.count;
        v.1 += e.stats.total_ns;
    }
}

/// Last totals of VMs whose keys were deleted, kept only while a window that began before
/// they ended is open (nothing is kept when no pprof request is running).
#[derive(Default)]
pub struct Retired {
    entries: VecDeque<(u64, StackTotals)>,
    next_seq: u64,
    /// Open windows: id → (when, the sequence number at its start). A request that went away
    /// without ending its window (client gone) expires after [`MAX_WINDOW`].
    open: HashMap<u64, (Instant, u64)>,
    next_window: u64,
}

impl Retired {
    /// Opens a window: its id and the sequence number of the next VM to retire.
    pub fn open_window(&mut self) -> (u64, u64) {
        let id = self.next_window;
        self.next_window += 1;
        self.open.insert(id, (Instant::now(), self.next_seq));
        (id, self.next_seq)
    }

    pub fn close_window(&mut self, id: u64) {
        self.open.remove(&id);
        self.prune();
    }

    pub fn push(&mut self, totals: StackTotals) {
        self.prune();
        if !self.open.is_empty() {
            self.entries.push_back((self.next_seq, totals));
        }
        self.next_seq += 1;
    }

    fn prune(&mut self) {
        let now = Instant::now();
        self.open.retain(|_, (at, _)| now.duration_since(*at) <= MAX_WINDOW + Duration::from_secs(60));
        let oldest = self.open.values().map(|(_, seq)| *seq).min().unwrap_or(u64::MAX);
        while self.entries.front().is_some_and(|(seq, _)| *seq < oldest) {
            self.entries.pop_front();
        }
    }

    /// Adds everything retired since `seq` to `totals`.
    pub fn add_since(&self, seq: u64, totals: &mut StackTotals) {
        for (_, t) in self.entries.iter().filter(|(s, _)| *s >= seq) {
            for (k, v) in t {
                let e = totals.entry(k.clone()).or_default();
                e.0 += v.0;
                e.1 += v.1;
            }
        }
    }
}

/// The gzipped profile of `end − start`.
pub fn window_profile(start: &WindowMark, end: &StackTotals) -> Vec<u8> {
    let mut stacks: Vec<(StackKey, (u64, u64))> = end
        .iter()
        .map(|(k, (n, ns))| {
            let (n0, ns0) = start.totals.get(k).copied().unwrap_or_default();
            (k.clone(), (n.saturating_sub(n0), ns.saturating_sub(ns0)))
        })
        .filter(|(_, (n, ns))| *n > 0 || *ns > 0)
        .collect();
    stacks.sort();
    pprof::encode(&stacks, start.unix_ns as i64, start.at.elapsed().as_nanos() as i64)
}
