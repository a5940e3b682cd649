//! A report as a table, JSON, CSV or folded stacks.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{hex, micros, port_cell, secs, table};
use crate::analysis::report::{GroupBy, Note, Report, Row};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
    /// Folded stacks (`caller;function;reason count`, weight = exits) for flame graphs.
    Folded,
}

/// The sentence a note prints.
pub fn note_text(n: &Note) -> String {
    match n {
        Note::UnknownCallers { unknown, total, why } => {
            let pct = if *total > 0 { 100.0 * *unknown as f64 / *total as f64 } else { 0.0 };
            let mut s = format!("{unknown} of {total} exits ({pct:.2}%) have an unknown caller ([unknown])");
            if let (true, Some(why)) = (*unknown > 0, why) {
                s.push_str(": no guest memory map could be verified: ");
                s.push_str(why);
            } else if *unknown > 0 {
                s.push_str(
                    ": no guest memory map for the VMM (record with --guest-memory-map, or run tinyvmm under kvmprof), \
                     exits before the map was known, or a frame that could not be read (no frame pointer, page not present, \
                     paging mode not walked)",
                );
            }
            s
        }
        Note::Partial { start_unix_ns, end_unix_ns } => format!(
            "partial recording: `kvmprof record` stopped without writing its final file (killed, out of memory, or the machine went down); \
             this is its last checkpoint, {} s of data ending at {} (exits after that are not in it)",
            secs(end_unix_ns.saturating_sub(*start_unix_ns)),
            super::utc(*end_unix_ns)
        ),
        Note::Unfinished(n) => format!("{n} exit(s) were still open when recording stopped (e.g. a final HLT); their time is what was measured before that"),
        Note::RecordsDropped { dropped, per_cpu, exits } => {
            let cpus: Vec<String> = per_cpu.iter().enumerate().filter(|(_, n)| **n > 0).map(|(c, n)| format!("CPU {c}: {n}")).collect();
            let by_cpu = if cpus.is_empty() { String::new() } else { format!(" ({})", cpus.join(", ")) };
            format!(
                "{dropped} of {exits} exits are missing from the streamed records{by_cpu}: the kernel's ring buffer was full \
                 (they are in the totals; record with a larger --records-buffer)"
            )
        }
        Note::PartialHistograms { without, total } => format!(
            "{without} of {total} exits came after the in-kernel exit map was full: they are counted with their time, but p50/p99 leave them out (no histogram)"
        ),
        Note::Stacks { walked, without, total, info } => {
            let by: Vec<String> = walked.iter().map(|(m, n)| format!("{n} by {}", method_text(*m))).collect();
            let how = match info {
                Some(i) => {
                    let table = match &i.table {
                        Some(t) => format!("the guest's {t} unwind table ({} rules, slide {:#x}) and frame pointers where it has no rule", i.table_entries, i.slide),
                        None => "frame pointers only (no unwind table: record with --vmlinux ELF)".into(),
                    };
                    let lost = if i.lost > 0 { format!("; {} stacks did not fit the in-kernel map (those exits keep their caller)", i.lost) } else { String::new() };
                    let auto = match (&i.slide_from_exits, i.stacks_from_exit) {
                        (Some(how), Some(n)) => format!("; {how}, so stacks start after the first {n} exits (those have their caller only)"),
                        (Some(why), None) => format!("; {why}"),
                        _ => String::new(),
                    };
                    format!(", walked {} return addresses deep with {table}{lost}{auto}", i.depth)
                }
                None => ": record with `kvmprof record --stack-depth N` (N > 1) to walk guest stacks".into(),
            };
            let stacks = if by.is_empty() { "none".to_string() } else { by.join(", ") };
            format!("stacks of {} of {total} exits ({stacks}); {without} without one{how}", total - without)
        }
        Note::MapsFull { exits, thread_events } => format!("in-kernel maps were full: {exits} exits and {thread_events} thread events were lost"),
    }
}

/// One row as `report --format json` prints it (field names are part of the CLI contract).
#[derive(Serialize)]
struct JsonRow<'a> {
    rip: Option<String>,
    function: Option<&'a str>,
    reason: String,
    port: Option<String>,
    direction: Option<&'static str>,
    vcpu: Option<u32>,
    tid: Option<u32>,
    count: u64,
    time_ns: u64,
    percent: f64,
    mean_ns: u64,
    p50_ns: u64,
    p99_ns: u64,
    caller_rip: Option<String>,
    caller_function: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vm: Option<&'a str>,
    /// `--by stack`: the callers, innermost first (absent: no walked stack).
    #[serde(skip_serializing_if = "Option::is_none")]
    stack: Option<Vec<JsonFrame<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stack_method: Option<&'static str>,
}

#[derive(Serialize)]
struct JsonFrame<'a> {
    rip: Option<String>,
    function: Option<&'a str>,
}

impl<'a> JsonRow<'a> {
    fn new(r: &'a Row) -> JsonRow<'a> {
        JsonRow {
            rip: r.rip.map(hex),
            function: r.function.as_deref(),
            reason: r.reason.to_string(),
            port: r.port.map(|(_, p)| hex(p as u64)),
            direction: r.port.map(|(d, _)| d.name()),
            vcpu: r.vcpu,
            tid: r.tid,
            count: r.count,
            time_ns: r.time_ns,
            percent: r.percent,
            mean_ns: r.mean_ns,
            p50_ns: r.p50_ns,
            p99_ns: r.p99_ns,
            caller_rip: r.caller.as_ref().and_then(|c| c.rip).map(hex),
            caller_function: r.caller.as_ref().and_then(|c| c.function.as_deref()),
            pid: r.vm.as_ref().map(|v| v.0),
            vm: r.vm.as_ref().and_then(|v| v.1.as_deref()),
            stack: r.stack.as_ref().map(|(cs, _)| cs.iter().map(|c| JsonFrame { rip: c.rip.map(hex), function: c.function.as_deref() }).collect()),
            stack_method: r.stack.as_ref().map(|(_, m)| m.name()),
        }
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    source: &'static str,
    by: &'static str,
    total_exits: u64,
    total_time_ns: u64,
    notes: Vec<String>,
    /// Present when the recording was made with `--records`.
    #[serde(skip_serializing_if = "Option::is_none")]
    records: Option<JsonRecords>,
    rows: Vec<JsonRow<'a>>,
}

#[derive(Serialize)]
struct JsonRecords {
    kept: Option<u64>,
    dropped: u64,
    dropped_per_cpu: Vec<u64>,
}

pub fn render(rep: &Report, format: Format, top: Option<usize>) -> String {
    let rows = &rep.rows[..top.unwrap_or(usize::MAX).min(rep.rows.len())];
    match format {
        Format::Json => {
            let v = JsonReport {
                source: rep.source.name(),
                by: rep.by.name(),
                total_exits: rep.total_exits,
                total_time_ns: rep.total_time_ns,
                notes: rep.notes.iter().map(note_text).collect(),
                records: rep.records.as_ref().map(|r| JsonRecords { kept: r.kept, dropped: r.dropped, dropped_per_cpu: r.dropped_per_cpu.clone() }),
                rows: rows.iter().map(JsonRow::new).collect(),
            };
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
        }
        Format::Csv => csv(rep, rows),
        Format::Table if rep.by == GroupBy::Caller => callers_table(rep, rows),
        Format::Table if rep.by == GroupBy::Stack => stacks_table(rep, rows),
        Format::Table => table(rep, rows),
        Format::Folded => folded(rows),
    }
}

fn header_line(rep: &Report) -> String {
    format!("source: {}  |  {} exits, {} s in exits\n", rep.source.description(), rep.total_exits, secs(rep.total_time_ns))
}

fn csv(rep: &Report, rows: &[Row]) -> String {
    let mut s = String::from("source,rip,function,reason,port,direction,vcpu,tid,count,time_ns,percent,mean_ns,p50_ns,p99_ns\n");
    let opt = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{:.4},{},{},{}",
            rep.source.name(),
            r.rip.map(hex).unwrap_or_default(),
            csv_field(r.function.as_deref().unwrap_or("")),
            csv_field(&r.reason.to_string()),
            r.port.map(|(_, p)| hex(p as u64)).unwrap_or_default(),
            r.port.map_or("", |(d, _)| d.name()),
            opt(r.vcpu),
            opt(r.tid),
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

fn table(rep: &Report, rows: &[Row]) -> String {
    let mut s = header_line(rep);
    let first = match rep.by {
        GroupBy::Vcpu => "vCPU (tid)",
        GroupBy::Vm => "VM (pid)",
        GroupBy::Port => "Port",
        GroupBy::Reason => "Reason",
        _ => "Trap address",
    };
    let header = [first, "Count", "Time (s)", "Time %", "Mean (us)", "p50 (us)", "p99 (us)", "Reason", "Port", "Function"];
    let mut cells: Vec<[String; 10]> = Vec::new();
    for r in rows {
        let first = match rep.by {
            GroupBy::Vcpu => format!("{} ({})", r.vcpu.map_or("?".into(), |v| v.to_string()), r.tid.unwrap_or(0)),
            GroupBy::Port => r.port.map(|(_, p)| hex(p as u64)).unwrap_or_default(),
            GroupBy::Reason => r.reason.to_string(),
            GroupBy::Vm => r.vm.as_ref().map(|(pid, name)| format!("{} ({pid})", name.as_deref().unwrap_or("?"))).unwrap_or_default(),
            _ => r.rip.map(hex).unwrap_or_default(),
        };
        let function = match (&r.function, rep.by) {
            (Some(f), _) => f.clone(),
            (None, GroupBy::Rip | GroupBy::Function) => "[unknown]".into(),
            (None, _) => "-".into(),
        };
        cells.push([
            first,
            r.count.to_string(),
            secs(r.time_ns),
            format!("{:.2}%", r.percent),
            micros(r.mean_ns),
            micros(r.p50_ns),
            micros(r.p99_ns),
            r.reason.to_string(),
            port_cell(r.port),
            function,
        ]);
    }
    // Numbers right-aligned, text left-aligned, as in the paper's tables.
    s.push_str(&table::render(&header, &cells, 1..=6));
    if let Some(more) = table::more_rows(rows.len(), rep.rows.len()) {
        let _ = writeln!(s, "{more}");
    }
    for n in &rep.notes {
        let _ = writeln!(s, "note: {}", note_text(n));
    }
    if rows.iter().any(|r| r.count > 0) {
        let _ = writeln!(s, "p50/p99: from a log-linear histogram (8 buckets per power of two: within 6.25%)");
    }
    s
}

/// `report --by caller`: the paper's Table 3 layout.
fn callers_table(rep: &Report, rows: &[Row]) -> String {
    let mut s = header_line(rep);
    let header = ["Trap address", "Trap function", "Caller address", "Caller function", "Count", "Time (s)", "Time %", "Reason", "Port"];
    let unknown = || "[unknown]".to_string();
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            let caller_rip = r.caller.as_ref().and_then(|c| c.rip);
            let caller_fn = r.caller.as_ref().and_then(|c| c.function.clone());
            [
                r.rip.map(hex).unwrap_or_default(),
                r.function.clone().unwrap_or_else(unknown),
                caller_rip.map(hex).unwrap_or_else(unknown),
                caller_fn.unwrap_or_else(|| if caller_rip.is_some() { "?".into() } else { unknown() }),
                r.count.to_string(),
                secs(r.time_ns),
                format!("{:.2}%", r.percent),
                r.reason.to_string(),
                port_cell(r.port),
            ]
        })
        .collect();
    s.push_str(&table::render(&header, &cells, 4..=6));
    if let Some(more) = table::more_rows(rows.len(), rep.rows.len()) {
        let _ = writeln!(s, "{more}");
    }
    for n in &rep.notes {
        let _ = writeln!(s, "note: {}", note_text(n));
    }
    s
}

/// How a stack's method reads in tables and notes.
fn method_text(m: crate::model::StackMethod) -> &'static str {
    use crate::model::StackMethod;
    match m {
        StackMethod::Table => "unwind table",
        StackMethod::FramePointer => "frame pointer",
        StackMethod::Mixed => "table + frame pointer",
        StackMethod::Unknown => "?",
    }
}

/// `report --by stack`: one row per stack, the exiting function first.
fn stacks_table(rep: &Report, rows: &[Row]) -> String {
    let mut s = header_line(rep);
    let header = ["Count", "Time (s)", "Time %", "Reason", "Port", "Method", "Stack (exiting function <- callers)"];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            let mut frames = vec![r.function.clone().or_else(|| r.rip.map(hex)).unwrap_or_else(|| "[unknown]".into())];
            match &r.stack {
                Some((callers, _)) => frames.extend(callers.iter().map(|c| c.function.clone().or_else(|| c.rip.map(hex)).unwrap_or_else(|| "?".into()))),
                None => frames.push("[unknown]".into()),
            }
            [
                r.count.to_string(),
                secs(r.time_ns),
                format!("{:.2}%", r.percent),
                r.reason.to_string(),
                port_cell(r.port),
                r.stack.as_ref().map_or("-", |(_, m)| method_text(*m)).to_string(),
                frames.join(" <- "),
            ]
        })
        .collect();
    s.push_str(&table::render(&header, &cells, 0..=2));
    if let Some(more) = table::more_rows(rows.len(), rep.rows.len()) {
        let _ = writeln!(s, "{more}");
    }
    for n in &rep.notes {
        let _ = writeln!(s, "note: {}", note_text(n));
    }
    s
}

/// Folded stacks, one line per (caller, function, reason): `frame;frame;reason count`.
/// The function frame is the guest function, or the RIP when it is not known; the caller
/// frame is added when the rows carry one. Weight: number of exits.
fn folded(rows: &[Row]) -> String {
    let clean = |f: &str| f.replace([';', '\n'], ":").replace(' ', "_");
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    for r in rows {
        let mut frames = Vec::new();
        // `--by stack`: the whole walked stack, outermost first.
        if let Some((callers, _)) = &r.stack {
            for c in callers.iter().rev() {
                frames.push(clean(&c.function.clone().or_else(|| c.rip.map(hex)).unwrap_or_else(|| "[unknown]".into())));
            }
        }
        if let Some(c) = &r.caller {
            if let Some(name) = c.function.clone().or_else(|| c.rip.map(hex)) {
                frames.push(clean(&name));
            }
        }
        let func = r
            .function
            .clone()
            .or_else(|| r.rip.map(hex))
            .or_else(|| r.port.map(|(_, p)| hex(p as u64)))
            .unwrap_or_else(|| "[unknown]".into());
        frames.push(clean(&func));
        let reason = match r.port {
            Some((d, p)) => format!("{} {} {}", r.reason, d.name(), hex(p as u64)),
            None => r.reason.to_string(),
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

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
