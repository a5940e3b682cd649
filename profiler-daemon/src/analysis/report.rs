//! `kvmprof report`'s numbers: a profile grouped by RIP, function, reason, port, vCPU or
//! caller, with count, time, share and percentiles per group. Formatting is in `render::report`.
use std::collections::BTreeMap;

use profiler_common::HIST_BUCKETS;

use super::percentile::hist_quantile;
use crate::model::{Direction, Exit, Profile, Reason, Source, StackMethod};

/// What one row of a report stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// One row per trap address (RIP) and reason: the paper's Tables 1 and 2.
    Rip,
    /// One row per guest function (needs guest symbols).
    Function,
    /// One row per exit reason.
    Reason,
    /// One row per I/O port and direction (port-I/O exits only).
    Port,
    /// One row per vCPU thread.
    Vcpu,
    /// One row per trap address and caller: the paper's Table 3.
    Caller,
    /// One row per VM process (its PID and name).
    Vm,
    /// One row per guest stack (`record --stack-depth`): the exiting function and the
    /// functions of its return addresses, and the reason.
    Stack,
}

impl GroupBy {
    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Rip => "rip",
            GroupBy::Function => "function",
            GroupBy::Reason => "reason",
            GroupBy::Port => "port",
            GroupBy::Vcpu => "vcpu",
            GroupBy::Caller => "caller",
            GroupBy::Vm => "vm",
            GroupBy::Stack => "stack",
        }
    }
}

/// The reason of a row: one, or several (a function or vCPU exits for more than one reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowReason {
    One(Reason),
    Mixed,
}

impl std::fmt::Display for RowReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowReason::One(r) => r.fmt(f),
            RowReason::Mixed => f.write_str("mixed"),
        }
    }
}

/// `--by caller`: the guest function that made the call the exiting function returns to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The return address in the caller; `None` = not read (no frame pointer, no memory map).
    pub rip: Option<u64>,
    pub function: Option<String>,
}

/// One output row. `None` fields are those the grouping does not determine.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The RIP of the row; for function rows the function's hottest RIP.
    pub rip: Option<u64>,
    pub function: Option<String>,
    pub reason: RowReason,
    /// The port, when every exit of the row was on one port in one direction.
    pub port: Option<(Direction, u16)>,
    pub vcpu: Option<u32>,
    pub tid: Option<u32>,
    pub count: u64,
    pub time_ns: u64,
    /// Share of all exit time in % (of all exits when no time was measured).
    pub percent: f64,
    pub mean_ns: u64,
    /// Median and 99th percentile exit time from the histogram (within 6.25%).
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub caller: Option<Caller>,
    /// `--by vm`: the VM process's PID and name (`None` if the recording does not know it).
    pub vm: Option<(u32, Option<String>)>,
    /// `--by stack`: the callers, innermost first, and how they were found (None: the exit
    /// has no walked stack).
    pub stack: Option<(Vec<Caller>, StackMethod)>,
}

/// Something a report must say besides its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The recording is the last checkpoint of a `record` that never finished; its data
    /// spans `start_unix_ns` to `end_unix_ns`.
    Partial { start_unix_ns: u64, end_unix_ns: u64 },
    /// `--by caller`: exits whose caller could not be read.
    /// `why`: the recording's reason no guest memory map could be verified, if it has one.
    UnknownCallers { unknown: u64, total: u64, why: Option<String> },
    /// Exits still open when recording stopped.
    Unfinished(u64),
    /// Streamed records the ring buffer had no room for: in total, per CPU (when the record
    /// stream says), and of how many exits.
    RecordsDropped { dropped: u64, per_cpu: Vec<u64>, exits: u64 },
    /// In-kernel maps were full: exits and thread events lost.
    MapsFull { exits: u64, thread_events: u64 },
    /// `--by stack`: how many exits have a walked stack, by method, and what walked them.
    Stacks { walked: Vec<(StackMethod, u64)>, without: u64, total: u64, info: Option<crate::model::StackInfo> },
    /// Some exits have count and time but no histogram (counted after the in-kernel exit map
    /// filled): the percentiles are of the others.
    PartialHistograms { without: u64, total: u64 },
}

/// Everything a report prints, before formatting.
#[derive(Debug, Clone)]
pub struct Report {
    pub source: Source,
    pub by: GroupBy,
    pub total_exits: u64,
    pub total_time_ns: u64,
    pub rows: Vec<Row>,
    pub notes: Vec<Note>,
    /// `record --records`: what became of the streamed records.
    pub records: Option<RecordsSummary>,
}

/// The streamed records of a recording made with `--records` (or imported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsSummary {
    /// Records kept (in the record stream file, or the recording's own list); None when the
    /// recording has neither (made before streaming, without records).
    pub kept: Option<u64>,
    pub dropped: u64,
    /// Per possible CPU, when the record stream says (empty otherwise).
    pub dropped_per_cpu: Vec<u64>,
}

fn records_summary(profile: &Profile) -> Option<RecordsSummary> {
    if !profile.meta.records_requested {
        return None;
    }
    let kept = match (&profile.records_file, &profile.records) {
        (Some(s), _) => Some(s.records),
        (None, Some(r)) => Some(r.len() as u64),
        (None, None) => None,
    };
    let dropped_per_cpu = profile.records_file.as_ref().map(|s| s.dropped_per_cpu.clone()).unwrap_or_default();
    Some(RecordsSummary { kept, dropped: profile.meta.records_dropped, dropped_per_cpu })
}

/// What rows are grouped by: one value per row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Rip(u64, Reason),
    /// A named function; unknown functions get a row per RIP.
    Function(String),
    UnknownFunction(u64),
    Reason(Reason),
    Port(u16, Direction),
    Thread(u32, u32),
    Caller(u64, Option<u64>, Reason),
    Vm(u32),
    /// The exiting function (or RIP), its callers' functions (or addresses), innermost
    /// first, the method, and the reason.
    Stack(String, Vec<String>, Option<StackMethod>, Reason),
}

struct Acc {
    first: Row,
    hist: [u64; HIST_BUCKETS],
    /// For function rows: the hottest RIP seen in the function, and its count.
    top_rip: Option<(u64, u64)>,
}

pub fn build(profile: &Profile, by: GroupBy, resolve: &dyn Fn(u64) -> Option<String>) -> Report {
    let total_exits = profile.total_exits();
    let total_time_ns = profile.total_time_ns();
    let mut fn_cache: BTreeMap<u64, Option<String>> = BTreeMap::new();
    let mut func = |rip: u64| fn_cache.entry(rip).or_insert_with(|| resolve(rip)).clone();
    let mut groups: BTreeMap<Key, Acc> = BTreeMap::new();
    for e in &profile.exits {
        let port = e.access.port();
        let key = match by {
            GroupBy::Rip => Key::Rip(e.rip, e.reason),
            GroupBy::Function => func(e.rip).map_or(Key::UnknownFunction(e.rip), Key::Function),
            GroupBy::Reason => Key::Reason(e.reason),
            GroupBy::Port => match port {
                Some((dir, p)) => Key::Port(p, dir),
                None => continue,
            },
            GroupBy::Vcpu => Key::Thread(e.tgid, e.tid),
            GroupBy::Caller => Key::Caller(e.rip, e.caller, e.reason),
            GroupBy::Vm => Key::Vm(e.tgid),
            GroupBy::Stack => {
                let at = func(e.rip).unwrap_or_else(|| crate::render::hex(e.rip));
                let frames = e.stack.iter().flat_map(|st| &st.frames).map(|ra| super::callers::caller_function(*ra, resolve).unwrap_or_else(|| crate::render::hex(*ra))).collect();
                Key::Stack(at, frames, e.stack.as_ref().map(|st| st.method), e.reason)
            }
        };
        let acc = groups.entry(key).or_insert_with(|| Acc { first: first_row(profile, e, by, &mut func, resolve), hist: [0; HIST_BUCKETS], top_rip: None });
        let row = &mut acc.first;
        row.count += e.stats.count;
        row.time_ns += e.stats.total_ns;
        for (a, b) in acc.hist.iter_mut().zip(e.stats.hist.iter()) {
            *a += b;
        }
        if row.reason != RowReason::One(e.reason) {
            row.reason = RowReason::Mixed;
        }
        if row.port != port {
            row.port = None;
        }
        if matches!(by, GroupBy::Function | GroupBy::Stack) && acc.top_rip.is_none_or(|(_, c)| e.stats.count > c) {
            acc.top_rip = Some((e.rip, e.stats.count));
        }
    }
    let mut rows: Vec<Row> = groups
        .into_values()
        .map(|a| {
            let mut r = a.first;
            r.percent = share(r.time_ns, total_time_ns, r.count, total_exits);
            r.mean_ns = r.time_ns.checked_div(r.count).unwrap_or(0);
            r.p50_ns = hist_quantile(&a.hist, 0.50);
            r.p99_ns = hist_quantile(&a.hist, 0.99);
            if let Some((rip, _)) = a.top_rip {
                r.rip = Some(rip);
            }
            r
        })
        .collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then(b.time_ns.cmp(&a.time_ns)).then(a.rip.cmp(&b.rip)));
    Report { source: profile.meta.source, by, total_exits, total_time_ns, rows, notes: notes(profile, by), records: records_summary(profile) }
}

/// A row's fixed fields, from the first exit of its group; counts start at 0.
fn first_row(profile: &Profile, e: &Exit, by: GroupBy, func: &mut dyn FnMut(u64) -> Option<String>, resolve: &dyn Fn(u64) -> Option<String>) -> Row {
    let mut row = Row {
        rip: None,
        function: None,
        reason: RowReason::One(e.reason),
        port: e.access.port(),
        vcpu: None,
        tid: None,
        count: 0,
        time_ns: 0,
        percent: 0.0,
        mean_ns: 0,
        p50_ns: 0,
        p99_ns: 0,
        caller: None,
        vm: None,
        stack: None,
    };
    match by {
        GroupBy::Rip => {
            row.rip = Some(e.rip);
            row.function = func(e.rip);
        }
        GroupBy::Function => row.function = func(e.rip),
        GroupBy::Vcpu => {
            row.vcpu = profile.vcpu_of(e);
            row.tid = Some(e.tid);
        }
        GroupBy::Caller => {
            row.rip = Some(e.rip);
            row.function = func(e.rip);
            row.caller = Some(Caller { rip: e.caller, function: e.caller.and_then(|c| super::callers::caller_function(c, resolve)) });
        }
        GroupBy::Vm => {
            let name = profile.threads.values().filter(|t| t.tgid == e.tgid).find_map(|t| t.vm_name.clone());
            row.vm = Some((e.tgid, name));
        }
        GroupBy::Stack => {
            row.function = func(e.rip);
            row.stack = e.stack.as_ref().map(|st| {
                let callers = st.frames.iter().map(|ra| Caller { rip: Some(*ra), function: super::callers::caller_function(*ra, resolve) }).collect();
                (callers, st.method)
            });
        }
        GroupBy::Reason | GroupBy::Port => {}
    }
    row
}

fn share(time_ns: u64, total_time_ns: u64, count: u64, total_exits: u64) -> f64 {
    if total_time_ns > 0 {
        100.0 * time_ns as f64 / total_time_ns as f64
    } else if total_exits > 0 {
        100.0 * count as f64 / total_exits as f64
    } else {
        0.0
    }
}

fn notes(profile: &Profile, by: GroupBy) -> Vec<Note> {
    let mut notes = Vec::new();
    if by == GroupBy::Caller {
        let (unknown, total) = super::callers::unknown_callers(&profile.exits);
        let why = match &profile.meta.guest_memory {
            Some(crate::model::GuestMemoryOrigin::Unverified(why)) => Some(why.clone()),
            _ => None,
        };
        notes.push(Note::UnknownCallers { unknown, total, why });
    }
    if by == GroupBy::Stack {
        let mut walked: BTreeMap<StackMethod, u64> = BTreeMap::new();
        let mut without = 0;
        for e in &profile.exits {
            match &e.stack {
                Some(st) => *walked.entry(st.method).or_default() += e.stats.count,
                None => without += e.stats.count,
            }
        }
        notes.push(Note::Stacks { walked: walked.into_iter().collect(), without, total: profile.total_exits(), info: profile.meta.stacks.clone() });
    }
    let timed: u64 = profile.exits.iter().map(|e| e.stats.hist.iter().sum::<u64>()).sum();
    let total = profile.total_exits();
    if timed < total {
        notes.push(Note::PartialHistograms { without: total - timed, total });
    }
    let m = &profile.meta;
    if m.partial {
        notes.insert(0, Note::Partial { start_unix_ns: m.start_unix_ns, end_unix_ns: m.end_unix_ns });
    }
    if m.unfinished_exits > 0 {
        notes.push(Note::Unfinished(m.unfinished_exits));
    }
    if m.records_dropped > 0 {
        let per_cpu = profile.records_file.as_ref().map(|s| s.dropped_per_cpu.clone()).unwrap_or_default();
        notes.push(Note::RecordsDropped { dropped: m.records_dropped, per_cpu, exits: profile.total_exits() });
    }
    if m.exit_keys_full > 0 || m.threads_full > 0 {
        notes.push(Note::MapsFull { exits: m.exit_keys_full, thread_events: m.threads_full });
    }
    notes
}
