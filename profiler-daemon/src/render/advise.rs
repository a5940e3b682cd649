//! `kvmprof advise` output: the candidates table and the documented JSON object.
use std::fmt::Write as _;

use serde::Serialize;

use super::{hex, secs, table};
use crate::analysis::advise::{AccessRow, Advice, Candidate, Target};
use crate::model::Source;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// One access as the JSON prints it: `{"rip", "direction", "port"}` or `{..., "gpa"}`.
#[derive(Debug, Clone, Serialize)]
pub struct JsonAccess {
    pub rip: String,
    pub direction: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpa: Option<String>,
    pub function: Option<String>,
}

impl JsonAccess {
    pub fn new(a: &AccessRow) -> JsonAccess {
        let (port, gpa) = match a.target {
            Target::Port(p) => (Some(hex(p as u64)), None),
            Target::Gpa(g) => (None, Some(hex(g))),
        };
        JsonAccess { rip: hex(a.rip), direction: a.direction.name(), port, gpa, function: a.function.clone() }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct JsonCandidate {
    pub functions: Vec<String>,
    pub accesses: Vec<JsonAccess>,
    /// The whole run is its first access repeated `run_length` times.
    pub repeats_one_access: bool,
    pub run_length: u32,
    pub occurrences: u64,
    pub exits: u64,
    pub exits_saved: u64,
    pub time_ns: u64,
    pub time_saved_ns: u64,
    pub has_reads: bool,
}

impl JsonCandidate {
    pub fn new(c: &Candidate) -> JsonCandidate {
        JsonCandidate {
            functions: c.functions.clone(),
            accesses: c.accesses.iter().map(JsonAccess::new).collect(),
            repeats_one_access: c.repeats_one_access,
            run_length: c.run_length,
            occurrences: c.occurrences,
            exits: c.exits,
            exits_saved: c.exits_saved,
            time_ns: c.time_ns,
            time_saved_ns: c.time_saved_ns,
            has_reads: c.has_reads,
        }
    }
}

#[derive(Serialize)]
struct JsonAdvice<'a> {
    source: &'a str,
    max_gap_ns: u64,
    total_exits: u64,
    exits_in_runs: u64,
    runs_lost: u64,
    candidates: Vec<JsonCandidate>,
    /// Per function: `function`, `exits`, `exits_in_runs`.
    functions: Vec<JsonFunction>,
    exits_in_runs_unplaced: u64,
}

#[derive(Serialize)]
struct JsonFunction {
    function: String,
    exits: u64,
    exits_in_runs: u64,
}

/// The accesses of a candidate in one cell: `out 0x1f1@0x100266 out 0x1f2@0x10026d ...`, a
/// repeated access as `out 0x1f0@0x100451 x256`.
pub fn accesses_cell(c: &Candidate) -> String {
    let one = |a: &AccessRow| {
        let t = match a.target {
            Target::Port(p) => hex(p as u64),
            Target::Gpa(g) => format!("gpa {}", hex(g)),
        };
        format!("{} {t}@{}", a.direction.name(), hex(a.rip))
    };
    if c.repeats_one_access {
        return match c.accesses.first() {
            Some(a) => format!("{} x{}", one(a), c.run_length),
            None => "-".into(),
        };
    }
    let mut s = c.accesses.iter().map(one).collect::<Vec<_>>().join(" ");
    if (c.accesses.len() as u32) < c.run_length {
        let _ = write!(s, " ... (+{} more)", c.run_length - c.accesses.len() as u32);
    }
    s
}

/// `show_functions`: also the table of exits in runs per function (the table format).
pub fn render(a: &Advice, source: Source, format: Format, top: Option<usize>, show_functions: bool) -> String {
    let shown = top.unwrap_or(a.candidates.len()).min(a.candidates.len());
    match format {
        Format::Json => {
            let j = JsonAdvice {
                source: source.name(),
                max_gap_ns: a.max_gap_ns,
                total_exits: a.total_exits,
                exits_in_runs: a.exits_in_runs,
                runs_lost: a.runs_lost,
                candidates: a.candidates[..shown].iter().map(JsonCandidate::new).collect(),
                functions: a.functions.iter().map(|f| JsonFunction { function: f.function.clone(), exits: f.exits, exits_in_runs: f.exits_in_runs }).collect(),
                exits_in_runs_unplaced: a.exits_in_runs_unplaced,
            };
            serde_json::to_string_pretty(&j).unwrap_or_default() + "\n"
        }
        Format::Table => {
            let mut s = String::new();
            let pct = if a.total_exits == 0 { 0.0 } else { 100.0 * a.exits_in_runs as f64 / a.total_exits as f64 };
            let _ = writeln!(
                s,
                "source: {}  |  {} exits, {} ({pct:.1}%) in runs of successive I/O exits (max gap {} us)",
                source.name(),
                a.total_exits,
                a.exits_in_runs,
                a.max_gap_ns as f64 / 1e3
            );
            let rows: Vec<Vec<String>> = a.candidates[..shown]
                .iter()
                .map(|c| {
                    vec![
                        c.exits_saved.to_string(),
                        secs(c.time_saved_ns),
                        c.run_length.to_string(),
                        c.occurrences.to_string(),
                        c.exits.to_string(),
                        if c.has_reads { "yes" } else { "no" }.to_string(),
                        c.functions.join(", "),
                        accesses_cell(c),
                    ]
                })
                .collect();
            s += &table::render(&["Exits saved", "Time saved (s)", "Run", "Times", "Exits", "Reads", "Function(s)", "Accesses (dir port@RIP, in order)"], &rows, 0..=4);
            if let Some(m) = table::more_rows(shown, a.candidates.len()) {
                let _ = writeln!(s, "{m}");
            }
            let _ = writeln!(
                s,
                "exits saved = (run length - 1) x times: the run's accesses queued in guest memory and handed to the VMM in one exit;\n\
                 time saved = the run's measured exit time minus one such exit per run (at the run's mean exit time)"
            );
            if a.candidates[..shown].iter().any(|c| c.has_reads) {
                let _ = writeln!(s, "Reads = yes: the guest may need each value before its next access; a plain write queue cannot carry such a run");
            }
            if show_functions {
                let _ = writeln!(s, "\nexits in runs, by function:");
                let rows: Vec<Vec<String>> = a
                    .functions
                    .iter()
                    .take(top.unwrap_or(usize::MAX))
                    .map(|f| {
                        let pct = if f.exits == 0 { 0.0 } else { 100.0 * f.exits_in_runs as f64 / f.exits as f64 };
                        vec![f.exits.to_string(), f.exits_in_runs.to_string(), format!("{pct:.1}%"), f.function.clone()]
                    })
                    .collect();
                s += &table::render(&["Exits", "In runs", "In runs %", "Function"], &rows, 0..=2);
                if a.exits_in_runs_unplaced > 0 {
                    let _ = writeln!(s, "({} exits in runs lie past the {} accesses kept per run and are not placed in a function)", a.exits_in_runs_unplaced, profiler_common::runs::RUN_ACCESSES);
                }
            }
            if a.runs_lost > 0 {
                let _ = writeln!(s, "note: {} run(s) were not counted: the in-kernel run map was full", a.runs_lost);
            }
            s
        }
    }
}
