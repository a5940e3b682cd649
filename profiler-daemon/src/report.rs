//! `kvmprof report`: the paper's hot-exit tables from a recording.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use profiler_common::{detail, NO_VCPU};
use serde::Serialize;
use serde_json::json;

use crate::reasons;
use crate::text_table;
use crate::recording::{Exit, Recording};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// One row per trap address (RIP) and reason: the paper's Tables 1 and 2.
    Rip,
    /// One row per guest function (needs --vmlinux or --kallsyms).
    Function,
    /// One row per exit reason.
    Reason,
    /// One row per I/O port and direction (port-I/O exits only).
    Port,
    /// One row per vCPU thread.
    Vcpu,
    /// One row per trap address and caller: the paper's Table 3 (see `callers`).
    Caller,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
    /// Folded stacks (`caller;function;reason count`, weight = exits) for flame graphs:
    /// `inferno-flamegraph` / `flamegraph.pl`, or `kvmprof report --svg FILE`.
    Folded,
}

/// One output row. `None` fields are those the grouping does not determine.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub rip: Option<String>,
    pub function: Option<String>,
    pub reason: String,
    pub port: Option<String>,
    pub direction: Option<&'static str>,
    pub vcpu: Option<u32>,
    pub tid: Option<u32>,
    pub count: u64,
    pub time_ns: u64,
    pub percent: f64,
    pub mean_ns: u64,
    /// Median exit time, estimated from the log2 histogram (see [`hist_quantile`]).
    pub p50_ns: u64,
    /// 99th-percentile exit time, estimated from the log2 histogram (see [`hist_quantile`]).
    pub p99_ns: u64,
    /// `--by caller`: return address in the caller (hex), `None` = unknown caller.
    pub caller_rip: Option<String>,
    /// `--by caller`: the function that made that call.
    pub caller_function: Option<String>,
}

/// The `q`-quantile (0 < q ≤ 1) of exit times from a 32-bucket log2 histogram (bucket i
/// holds times in [2^i, 2^(i+1)) ns; bucket 0 also holds 0 ns).
///
/// Estimate: the geometric midpoint 2^i·√2 of the bucket holding the ⌈q·n⌉-th smallest
/// exit (1 ns for bucket 0), so it is within a factor √2 of the true value. 0 when empty.
pub fn hist_quantile(hist: &[u64], q: f64) -> u64 {
    let n: u64 = hist.iter().sum();
    if n == 0 {
        return 0;
    }
    let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    for (i, c) in hist.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return if i == 0 { 1 } else { ((1u64 << i) as f64 * std::f64::consts::SQRT_2).round() as u64 };
        }
    }
    0
}

/// Everything a report prints, before formatting.
pub struct Report {
    pub source: String,
    pub by: GroupBy,
    pub total_exits: u64,
    pub total_time_ns: u64,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

#[derive(Default)]
struct Acc {
    rip: Option<u64>,
    function: Option<String>,
    reason: String,
    /// `Some(Some(x))`: every exit had detail x; `Some(None)`: mixed; `None`: none seen yet.
    port: Option<Option<(u8, u64)>>,
    vcpu: Option<u32>,
    tid: Option<u32>,
    count: u64,
    time_ns: u64,
    hist: [u64; profiler_common::HIST_BUCKETS],
    /// For function rows: the hottest RIP seen in the function, and its count.
    top_rip: Option<(u64, u64)>,
    /// For caller rows: the caller's return address (0 = unknown).
    caller: Option<u64>,
}

fn port_of(e: &Exit) -> Option<(u8, u64)> {
    detail::is_port(e.key.detail_kind).then_some((e.key.detail_kind, e.key.detail))
}

fn direction(kind: u8) -> &'static str {
    if kind == detail::PORT_IN {
        "in"
    } else {
        "out"
    }
}

/// Short reason name for tables (`KVM_EXIT_IO` is printed as `IO`, as the issue asks).
fn reason_of(e: &Exit) -> String {
    reasons::name(e.key.isa, e.key.reason)
}

pub fn build(rec: &Recording, by: GroupBy, resolve: &dyn Fn(u64) -> Option<String>) -> Report {
    let exits = rec.exits();
    let total_exits: u64 = exits.iter().map(|e| e.stats.count).sum();
    let total_time_ns: u64 = exits.iter().map(|e| e.stats.total_ns).sum();
    let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
    let mut fn_cache: BTreeMap<u64, Option<String>> = BTreeMap::new();
    let mut func = |rip: u64| fn_cache.entry(rip).or_insert_with(|| resolve(rip)).clone();
    for e in &exits {
        let k = &e.key;
        let vcpu = if k.vcpu != NO_VCPU { Some(k.vcpu) } else { rec.threads.get(&k.tid).and_then(|t| t.vcpu) };
        let group = match by {
            GroupBy::Rip => format!("{:016x}/{}/{}", k.rip, k.isa, k.reason),
            GroupBy::Function => func(k.rip).unwrap_or_else(|| format!("[unknown] {:#x}", k.rip)),
            GroupBy::Reason => format!("{}/{}", k.isa, k.reason),
            GroupBy::Port => match port_of(e) {
                Some((kind, port)) => format!("{port:08x}/{kind}"),
                None => continue,
            },
            GroupBy::Vcpu => format!("{}/{}", k.tgid, k.tid),
            GroupBy::Caller => format!("{:016x}/{:016x}/{}/{}", k.rip, k.caller, k.isa, k.reason),
        };
        let acc = groups.entry(group).or_default();
        acc.count += e.stats.count;
        acc.time_ns += e.stats.total_ns;
        for (a, b) in acc.hist.iter_mut().zip(e.stats.hist.iter()) {
            *a += b;
        }
        acc.reason = match (&acc.reason, by) {
            (r, GroupBy::Function | GroupBy::Vcpu) if !r.is_empty() && *r != reason_of(e) => "mixed".into(),
            _ => reason_of(e),
        };
        acc.port = Some(match acc.port {
            None => port_of(e),
            Some(p) if p == port_of(e) => p,
            Some(_) => None,
        });
        match by {
            GroupBy::Rip => {
                acc.rip = Some(k.rip);
                acc.function = func(k.rip);
            }
            GroupBy::Function => {
                acc.function = func(k.rip);
                if acc.top_rip.is_none_or(|(_, c)| e.stats.count > c) {
                    acc.top_rip = Some((k.rip, e.stats.count));
                }
            }
            GroupBy::Vcpu => {
                acc.vcpu = vcpu;
                acc.tid = Some(k.tid);
            }
            GroupBy::Caller => {
                acc.rip = Some(k.rip);
                acc.function = func(k.rip);
                acc.caller = Some(k.caller);
            }
            _ => {}
        }
    }
    let mut rows: Vec<Row> = groups
        .into_values()
        .map(|a| {
            let percent = if total_time_ns > 0 {
                100.0 * a.time_ns as f64 / total_time_ns as f64
            } else if total_exits > 0 {
                100.0 * a.count as f64 / total_exits as f64
            } else {
                0.0
            };
            let port = a.port.flatten();
            Row {
                rip: a.rip.or(a.top_rip.map(|(r, _)| r)).map(|r| format!("{r:#x}")),
                function: a.function,
                reason: a.reason,
                port: port.map(|(_, p)| format!("{p:#x}")),
                direction: port.map(|(kind, _)| direction(kind)),
                vcpu: a.vcpu,
                tid: a.tid,
                count: a.count,
                time_ns: a.time_ns,
                percent,
                mean_ns: if a.count > 0 { a.time_ns / a.count } else { 0 },
                p50_ns: hist_quantile(&a.hist, 0.50),
                p99_ns: hist_quantile(&a.hist, 0.99),
                caller_rip: a.caller.filter(|c| *c != profiler_common::UNKNOWN_CALLER).map(|c| format!("{c:#x}")),
                caller_function: a.caller.and_then(|c| crate::callers::caller_function(c, resolve)),
            }
        })
        .collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then(b.time_ns.cmp(&a.time_ns)).then(a.rip.cmp(&b.rip)));

    let mut notes = Vec::new();
    if by == GroupBy::Caller {
        notes.push(crate::callers::unknown_note(&exits));
    }
    let m = &rec.meta;
    if m.unfinished_exits > 0 {
        notes.push(format!("{} exit(s) were still open when recording stopped (e.g. a final HLT); their time is what was measured before that", m.unfinished_exits));
    }
    if m.records_dropped > 0 {
        notes.push(format!("{} streamed records were dropped (the totals include them)", m.records_dropped));
    }
    if m.exit_keys_full > 0 || m.threads_full > 0 {
        notes.push(format!("in-kernel maps were full: {} exits and {} thread events were lost", m.exit_keys_full, m.threads_full));
    }
    Report { source: m.source.clone(), by, total_exits, total_time_ns, rows, notes }
}

pub fn source_description(source: &str) -> &'static str {
    match source {
        "hw" => "hw: kvm_exit/kvm_entry",
        "emulated" => "emulated: kvm_pio/kvm_mmio/kvm_userspace_exit at the emulated instruction's RIP",
        _ => "unknown source",
    }
}

impl Report {
    pub fn render(&self, format: Format, top: Option<usize>) -> String {
        let rows = &self.rows[..top.unwrap_or(usize::MAX).min(self.rows.len())];
        match format {
            Format::Json => {
                let v = json!({
                    "source": self.source,
                    "by": format!("{:?}", self.by).to_lowercase(),
                    "total_exits": self.total_exits,
                    "total_time_ns": self.total_time_ns,
                    "notes": self.notes,
                    "rows": rows,
                });
                serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
            }
            Format::Csv => {
                let mut s = String::from("source,rip,function,reason,port,direction,vcpu,tid,count,time_ns,percent,mean_ns,p50_ns,p99_ns\n");
                for r in rows {
                    let o = |x: &Option<String>| x.clone().unwrap_or_default();
                    let _ = writeln!(
                        s,
                        "{},{},{},{},{},{},{},{},{},{},{:.4},{},{},{}",
                        self.source,
                        o(&r.rip),
                        csv_field(&o(&r.function)),
                        csv_field(&r.reason),
                        o(&r.port),
                        r.direction.unwrap_or(""),
                        r.vcpu.map(|v| v.to_string()).unwrap_or_default(),
                        r.tid.map(|v| v.to_string()).unwrap_or_default(),
                        r.count,
                        r.time_ns,
                        r.percent,
                        r.mean_ns,
                        r.p50_ns,
                        r.p99_ns
                    );
                }
                s
            }
            Format::Table => self.table(rows),
            Format::Folded => self.folded(rows),
        }
    }

    fn table(&self, rows: &[Row]) -> String {
        if self.by == GroupBy::Caller {
            return crate::callers::table(self, rows);
        }
        let mut s = String::new();
        let _ = writeln!(
            s,
            "source: {}  |  {} exits, {:.6} s in exits",
            source_description(&self.source),
            self.total_exits,
            self.total_time_ns as f64 / 1e9
        );
        let first = match self.by {
            GroupBy::Vcpu => "vCPU (tid)",
            GroupBy::Port => "Port",
            GroupBy::Reason => "Reason",
            _ => "Trap address",
        };
        let header = [first, "Count", "Time (s)", "Time %", "Mean (us)", "p50 (us)", "p99 (us)", "Reason", "Port", "Function"];
        let mut cells: Vec<[String; 10]> = Vec::new();
        for r in rows {
            let first = match self.by {
                GroupBy::Vcpu => format!("{} ({})", r.vcpu.map(|v| v.to_string()).unwrap_or("?".into()), r.tid.unwrap_or(0)),
                GroupBy::Port => r.port.clone().unwrap_or_default(),
                GroupBy::Reason => r.reason.clone(),
                _ => r.rip.clone().unwrap_or_default(),
            };
            let port = text_table::port(&r.port, r.direction);
            let function = match (&r.function, self.by) {
                (Some(f), _) => f.clone(),
                (None, GroupBy::Rip | GroupBy::Function) => "[unknown]".into(),
                (None, _) => "-".into(),
            };
            cells.push([
                first,
                r.count.to_string(),
                format!("{:.6}", r.time_ns as f64 / 1e9),
                format!("{:.2}%", r.percent),
                format!("{:.2}", r.mean_ns as f64 / 1e3),
                format!("{:.2}", r.p50_ns as f64 / 1e3),
                format!("{:.2}", r.p99_ns as f64 / 1e3),
                r.reason.clone(),
                port,
                function,
            ]);
        }
        // Numbers right-aligned, text left-aligned, as in the paper's tables.
        s.push_str(&text_table::render(&header, &cells, 1..=6));
        if let Some(more) = text_table::more_rows(rows.len(), self.rows.len()) {
            let _ = writeln!(s, "{more}");
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        if rows.iter().any(|r| r.count > 0) {
            let _ = writeln!(s, "p50/p99: geometric midpoint of the log2 histogram bucket (within a factor 1.41)");
        }
        s
    }

    /// Folded stacks, one line per (caller, function, reason): `frame;frame;reason count`.
    /// The function frame is the guest function, or the RIP when it is not known; the
    /// caller frame is added when the rows carry one. Weight: number of exits.
    fn folded(&self, rows: &[Row]) -> String {
        let clean = |f: &str| f.replace([';', '\n'], ":").replace(' ', "_");
        let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
        for r in rows {
            let mut frames = Vec::new();
            if let Some(c) = folded_caller(r) {
                frames.push(clean(&c));
            }
            let func = r.function.clone().or_else(|| r.rip.clone()).or_else(|| r.port.clone()).unwrap_or_else(|| "[unknown]".into());
            frames.push(clean(&func));
            let reason = match (&r.port, r.direction) {
                (Some(p), Some(d)) => format!("{} {d} {p}", r.reason),
                _ => r.reason.clone(),
            };
            frames.push(clean(&reason));
            *stacks.entry(frames.join(";")).or_default() += r.count;
        }
        let mut s = String::new();
        for (stack, n) in stacks {
            if n > 0 {
                let _ = writeln!(s, "{stack} {n}");
            }
        }
        s
    }
}

/// The caller frame of a folded stack (`--by caller` rows): the calling function, or its
/// return address when it has no name; none for other groupings or an unknown caller.
fn folded_caller(r: &Row) -> Option<String> {
    r.caller_function.clone().or_else(|| r.caller_rip.clone())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
