//! The collector thread: owns the live [`Session`], services it every 20 ms, and every
//! interval reads the maps, follows VMs as they come and go, and publishes the numbers.
//!
//! A VM's counters come straight from the in-kernel maps, which only grow while it runs. When
//! its process is gone, its keys are read one last time and deleted from the maps
//! ([`Session::forget_processes`]); its series carry those last values for that poll and are
//! removed on the next. Its last totals are kept aside for open pprof windows.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use profiler_common::HIST_BUCKETS;
use symbolizer::GuestSymbols;

use super::config::{Config, DEFAULT_INTERVAL};
use super::discovery::{self, Labels, ProcId};
use super::metrics::{le_index, Exposition, Published, SymbolState};
use super::pprof::{add_exits, window_profile, Retired, StackTotals, WindowMark};
use super::symbols::{Lookup, SymbolCache};
use super::vm::Vm;
use crate::live::session::unix_ns;
use crate::live::{LiveError, Session};
use crate::model::{Exit, Profile};

/// What the HTTP side and the signal handlers ask of the collector.
pub enum Request {
    /// Start a pprof window: the totals now.
    WindowStart(tokio::sync::oneshot::Sender<Result<WindowMark, String>>),
    /// End a window: its gzipped profile.
    WindowEnd(Box<WindowMark>, tokio::sync::oneshot::Sender<Result<Vec<u8>, String>>),
    /// A new configuration (SIGHUP), or `None`: the reload failed, the old one stays.
    Reload(Option<Box<Config>>),
}

/// How often the session is serviced (see `Session::poll`) and requests are answered.
const SERVICE: Duration = Duration::from_millis(20);
/// How often new vCPU threads are looked at, to name short-lived VMs while they run: every
/// service round, plus one round per 64 threads known (listing them costs a system call each).
fn watch_period(threads: usize) -> Duration {
    SERVICE * (1 + threads as u32 / 64)
}

pub struct Collector {
    session: Session,
    config: Config,
    /// `--interval`, which wins over the config's.
    interval_override: Option<Duration>,
    vms: BTreeMap<ProcId, Vm>,
    /// The symbol source each VM was given (None: no `[[vm]]` matched).
    sources: HashMap<ProcId, Option<GuestSymbols>>,
    /// PID → the running VM with that PID.
    live: HashMap<u32, ProcId>,
    labels: Labels,
    symbols: SymbolCache,
    retired: Retired,
    /// Exits without a histogram (exit map full) of VMs already removed: the counter goes on.
    retired_untimed: u64,
    /// Labels read while a process ran, before it became a VM on a poll.
    early: HashMap<u32, (ProcId, String)>,
    seen_tids: HashSet<u32>,
    published: Published,
    polls: u64,
    le_of: [usize; HIST_BUCKETS],
    reload_ok: bool,
}

pub fn log(msg: &str) {
    eprintln!("kvmprof: {msg}");
}

impl Collector {
    pub fn new(session: Session, config: Config, interval_override: Option<Duration>, published: Published) -> Collector {
        let mut c = Collector {
            session,
            config,
            interval_override,
            vms: BTreeMap::new(),
            sources: HashMap::new(),
            live: HashMap::new(),
            labels: Labels::default(),
            symbols: SymbolCache::default(),
            retired: Retired::default(),
            retired_untimed: 0,
            early: HashMap::new(),
            seen_tids: HashSet::new(),
            published,
            polls: 0,
            le_of: std::array::from_fn(le_index),
            reload_ok: true,
        };
        c.preload_symbols();
        c.published.set(Exposition { source: Some(c.session.source()), programs_attached: c.session.attached_programs(), config_reload_ok: true, ..Exposition::default() });
        c
    }

    /// Starts loading every configured symbol source now, so a VM has its function series from
    /// its first poll, however short it lives.
    fn preload_symbols(&mut self) {
        for v in &self.config.vms {
            let _ = self.symbols.get(&v.symbols);
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval_override.or(self.config.interval).unwrap_or(DEFAULT_INTERVAL)
    }

    /// Runs until `stop`; then detaches every program and returns how many were attached.
    pub fn run(mut self, requests: Receiver<Request>, stop: Arc<AtomicBool>) -> Result<usize, LiveError> {
        let mut next_tick = Instant::now();
        let mut next_watch = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            self.session.poll();
            let now = Instant::now();
            if now >= next_watch {
                self.watch_threads();
                next_watch = now + watch_period(self.seen_tids.len());
            }
            if self.vms.values().any(|v| v.symbols == SymbolState::Loading) {
                self.refresh_symbols();
            }
            if now >= next_tick {
                // A failed read is logged in tick(); the previous numbers stay published.
                let _ = self.tick();
                next_tick += self.interval();
                if next_tick < now {
                    next_tick = now + self.interval();
                }
            }
            match requests.recv_timeout(SERVICE) {
                Ok(r) => self.handle(r),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let attached = self.session.attached_programs();
        self.session.finish()?;
        Ok(attached)
    }

    fn handle(&mut self, r: Request) {
        match r {
            Request::WindowStart(reply) => {
                let totals = self.tick().map(|(p, _)| self.totals(&p));
                let mark = totals.map(|totals| {
                    let (id, retired_seq) = self.retired.open_window();
                    WindowMark { id, totals, retired_seq, at: Instant::now(), unix_ns: unix_ns() }
                });
                let _ = reply.send(mark);
            }
            Request::WindowEnd(mark, reply) => {
                let r = self.tick().map(|(p, _)| {
                    let mut end = self.totals(&p);
                    self.retired.add_since(mark.retired_seq, &mut end);
                    self.retired.close_window(mark.id);
                    window_profile(&mark, &end)
                });
                let _ = reply.send(r);
            }
            Request::Reload(None) => self.reload_ok = false,
            Request::Reload(Some(cfg)) => {
                self.config = *cfg;
                self.reload_ok = true;
                // A file that was missing may be there now; loaded ones stay shared.
                self.symbols.clear_failed();
                self.preload_symbols();
                let ids: Vec<ProcId> = self.vms.keys().copied().collect();
                for id in ids {
                    self.assign_symbols(id);
                }
            }
        }
    }

    /// Stack totals of the running VMs in `p`.
    fn totals(&mut self, p: &Profile) -> StackTotals {
        let mut t = StackTotals::new();
        for (tgid, exits) in by_tgid(p) {
            if let Some(vm) = self.live.get(&tgid).and_then(|id| self.vms.get_mut(id)) {
                add_exits(&mut t, vm, &exits);
            }
        }
        t
    }

    /// Reads the labels of processes whose vCPU threads just appeared, while they still run
    /// (a VM that lives less than one interval is named by its command line too).
    fn watch_threads(&mut self) {
        let tids: HashSet<u32> = self.session.thread_ids().into_iter().collect();
        for tid in tids.difference(&self.seen_tids) {
            let Some(tgid) = tgid_of(*tid) else { continue };
            if self.live.contains_key(&tgid) || self.early.contains_key(&tgid) {
                continue;
            }
            if let Some((start, true)) = discovery::proc_state(tgid) {
                self.early.insert(tgid, (ProcId { pid: tgid, start }, discovery::label(tgid)));
            }
        }
        self.seen_tids = tids;
    }

    fn add_vm(&mut self, id: ProcId, wanted: String) {
        let label = self.labels.assign(id, wanted);
        self.vms.insert(id, Vm::new(id, label));
        self.sources.insert(id, None);
        self.assign_symbols(id);
        self.refresh_symbols();
    }

    /// Gives VM `id` the symbols its label's `[[vm]]` entry names (or none).
    fn assign_symbols(&mut self, id: ProcId) {
        let Some(vm) = self.vms.get_mut(&id) else { return };
        let src = self.config.symbols_for(&vm.label).cloned();
        if self.sources.get(&id) != Some(&src) || vm.symbols == SymbolState::Error {
            self.sources.insert(id, src.clone());
            let state = if src.is_some() { SymbolState::Loading } else { SymbolState::None };
            vm.set_symbols(state, None);
        }
    }

    /// Moves each VM whose symbols are loading on, logging the outcome once.
    fn refresh_symbols(&mut self) {
        for (id, vm) in self.vms.iter_mut() {
            if vm.symbols != SymbolState::Loading {
                continue;
            }
            let Some(Some(src)) = self.sources.get(id) else { continue };
            match self.symbols.get(src) {
                Lookup::Loading => {}
                Lookup::Ready(sym) => vm.set_symbols(SymbolState::Ok, Some(sym)),
                Lookup::Failed(e) => {
                    log(&format!("VM {} (pid {}): serving it without function labels: {e}", vm.label, id.pid));
                    vm.set_symbols(SymbolState::Error, None);
                }
            }
        }
    }

    /// One poll; returns the snapshot and the PIDs of VMs that ended in it.
    fn tick(&mut self) -> Result<(Profile, BTreeSet<u32>), String> {
        let t0 = Instant::now();
        let profile = self.session.snapshot().map_err(|e| {
            let msg = format!("cannot read the in-kernel maps: {}", error_line(&e));
            log(&msg);
            msg
        })?;
        let snapshot_seconds = t0.elapsed().as_secs_f64();
        self.polls += 1;

        // VMs that ended on the previous poll have shown their last values: remove them.
        let gone: Vec<ProcId> = self.vms.iter().filter(|(_, v)| v.final_exits.is_some()).map(|(id, _)| *id).collect();
        for id in gone {
            if let Some(vm) = self.vms.remove(&id) {
                self.labels.release(&vm.label);
            }
            self.sources.remove(&id);
        }

        let exits = by_tgid(&profile);
        // Which running VMs have ended (their process is gone, or its PID is another's now).
        let mut ended: BTreeSet<ProcId> = self.live.values().copied().filter(|id| !discovery::alive(*id)).collect();
        for id in &ended {
            self.live.remove(&id.pid);
        }
        // New VMs: processes holding a KVM VM, or whose exits the programs saw.
        let mut found: BTreeSet<ProcId> = discovery::scan_vms().into_iter().collect();
        let ended_before: BTreeSet<u32> = ended.iter().map(|id| id.pid).collect();
        let unknown: Vec<u32> = exits.keys().copied().filter(|t| !self.live.contains_key(t) && !ended_before.contains(t)).collect();
        for tgid in &unknown {
            match discovery::proc_state(*tgid) {
                Some((start, true)) => {
                    found.insert(ProcId { pid: *tgid, start });
                }
                // Gone before any poll saw it running: it still gets its one poll of series.
                _ => {
                    let (id, label) = self.early.remove(tgid).unwrap_or_else(|| (ProcId { pid: *tgid, start: 0 }, comm_label(&profile, *tgid)));
                    if !self.vms.contains_key(&id) {
                        self.add_vm(id, label);
                    }
                    ended.insert(id);
                }
            }
        }
        for id in found {
            if self.live.contains_key(&id.pid) || self.vms.contains_key(&id) {
                continue;
            }
            let label = match self.early.remove(&id.pid) {
                Some((early_id, l)) if early_id == id => l,
                _ => discovery::label(id.pid),
            };
            self.add_vm(id, label);
            self.live.insert(id.pid, id);
        }
        self.early.retain(|pid, _| !ended.iter().any(|e| e.pid == *pid) && discovery::proc_state(*pid).is_some_and(|(_, r)| r));

        // Thread names give the vCPU index; kept per VM for its final series.
        for (tid, info) in &profile.threads {
            if let Some(vm) = self.live.get(&info.tgid).and_then(|id| self.vms.get_mut(id)) {
                vm.vcpus.insert(*tid, info.vcpu);
            }
        }
        self.refresh_symbols();

        let ended_pids: BTreeSet<u32> = ended.iter().map(|id| id.pid).collect();
        if !ended.is_empty() {
            match self.session.forget_processes(&ended_pids) {
                Ok(last) => {
                    let mut last_by: HashMap<u32, Vec<Exit>> = HashMap::new();
                    for e in last {
                        last_by.entry(e.tgid).or_default().push(e);
                    }
                    for id in &ended {
                        let Some(vm) = self.vms.get_mut(id) else { continue };
                        for (tid, info) in profile.threads.iter().filter(|(_, t)| t.tgid == id.pid) {
                            vm.vcpus.entry(*tid).or_insert(info.vcpu);
                        }
                        let fin = last_by.remove(&id.pid).unwrap_or_default();
                        let refs: Vec<&Exit> = fin.iter().collect();
                        let mut t = StackTotals::new();
                        add_exits(&mut t, vm, &refs);
                        self.retired.push(t);
                        self.retired_untimed += fin.iter().map(untimed).sum::<u64>();
                        vm.final_exits = Some(fin);
                    }
                }
                Err(e) => log(&format!("cannot remove the map entries of VMs that ended: {}", error_line(&e))),
            }
        }

        let top_n = self.config.top_functions;
        let mut series = Vec::with_capacity(self.vms.len());
        let mut untimed_live = 0;
        let mut keys = 0;
        for (id, vm) in self.vms.iter_mut() {
            let s = match vm.final_exits.take() {
                Some(fin) => {
                    let refs: Vec<&Exit> = fin.iter().collect();
                    let s = vm.series(&refs, top_n, &self.le_of);
                    vm.final_exits = Some(fin);
                    s
                }
                None => {
                    let refs = exits.get(&id.pid).cloned().unwrap_or_default();
                    untimed_live += refs.iter().map(|e| untimed(e)).sum::<u64>();
                    keys += refs.len();
                    vm.series(&refs, top_n, &self.le_of)
                }
            };
            series.push(s);
        }
        let m = &profile.meta;
        self.published.set(Exposition {
            source: Some(self.session.source()),
            vms: series,
            programs_attached: self.session.attached_programs(),
            records_dropped: m.records_dropped,
            exits_map_full: self.retired_untimed + untimed_live,
            overflow_map_full: m.exit_keys_full,
            threads_map_full: m.threads_full,
            exit_keys: keys,
            live_vms: self.live.len(),
            snapshot_seconds,
            polls: self.polls,
            config_reload_ok: self.reload_ok,
        });
        trim_heap();
        Ok((profile, ended_pids))
    }
}

/// Keeps glibc's mmap threshold at its 128 KiB default. glibc raises it dynamically to the
/// size of the largest block freed (up to 32 MiB); a poll's map-read buffers (about 1 MiB a
/// batch, 2 KiB per key and CPU) then come from the heap and stay resident after use. Measured
/// in the churn test: anonymous RSS 2-13 MiB, varying run to run, with the dynamic threshold;
/// a steady 1.3 MiB with it fixed.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a glibc tunable; it may be called at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Gives freed memory back to the kernel, once per poll (well under a millisecond here). A
/// poll reads 2 KiB per key and CPU, and a VM's removal reads its keys again: megabytes
/// allocated and freed in bursts, which glibc would otherwise keep in its arenas, so the
/// daemon's RSS would follow the busiest moment of the host's past instead of its present.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Exits counted without a histogram (the exit map was full when their key was new).
fn untimed(e: &Exit) -> u64 {
    e.stats.count.saturating_sub(e.stats.hist.iter().sum())
}

fn by_tgid(p: &Profile) -> HashMap<u32, Vec<&Exit>> {
    let mut m: HashMap<u32, Vec<&Exit>> = HashMap::new();
    for e in &p.exits {
        m.entry(e.tgid).or_default().push(e);
    }
    m
}

/// `comm-PID` from the names the kernel kept for a process that is gone.
fn comm_label(p: &Profile, tgid: u32) -> String {
    let comm = p.threads.values().find(|t| t.tgid == tgid && !t.comm.starts_with("vcpu") && !t.comm.starts_with("CPU ")).map(|t| t.comm.clone());
    format!("{}-{tgid}", comm.unwrap_or_else(|| "vm".into()))
}

/// The process of thread `tid` (`Tgid:` in /proc/TID/status).
fn tgid_of(tid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

/// An error and its causes on one line.
pub fn error_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s.replace('\n', " ")
}
