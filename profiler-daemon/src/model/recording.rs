//! The recording file written by `kvmprof record` and `kvmprof import`: a [`Profile`] on disk.
//!
//! Format (JSON, one object; `version` is bumped on any incompatible change):
//! ```text
//! { "format": "kvmprof-recording", "version": 2,
//!   "meta":    { "source": "hw"|"emulated", "origin": "live"|"import:ftrace"|"import:perf-script",
//!                "tool_version", "kernel", "host", "start_unix_ns", "end_unix_ns",
//!                "pid": N|null, "command": [..]|null, "command_status": N|null,
//!                "records_requested": bool, "records_dropped": N, "exit_keys_full": N,
//!                "threads_full": N, "unfinished_exits": N,
//!                "partial": true (optional: a checkpoint of a `record` that never finished) },
//!   "threads": { "<tid>": { "tgid": N, "comm": "vcpu0", "vcpu": N|null, "ended": true (optional) } },
//!   "exits":   [ { "tgid", "tid", "vcpu": N|null, "isa": "kvm_exit"|"vmx"|"svm", "reason": N,
//!                  "reason_name", "rip": "0x..", "detail_kind": "none"|"port_in"|"port_out"|
//!                  "mmio_read"|"mmio_write", "detail": "0x..", "count", "total_ns",
//!                  "hist": [[bucket, count], ...] (non-empty buckets of the log-linear
//!                          histogram, profiler_common::hist_bucket; they add up to "count",
//!                          or to less when some exits were counted without one),
//!                  "caller_rip": "0x.."|null (optional; null/absent = unknown caller) } ],
//!   "records": [ [start_ns, duration_ns, index into "exits"], ... ] | null,
//!   "records_file": { "name": "run.kvmprof.records", "format": "kvmprof-records",   (version 3;
//!                     "version": 1, "records": N, "dropped_per_cpu": [N, ...] },     optional)
//!   "runs": { "max_gap_ns": N, "lost": N,                          (optional: absent = no run data)
//!             "list": [ { "tgid", "length", "hash": "0x..", "occurrences", "total_ns",
//!                         "kind": "port_in"|"port_out"|"mmio_read"|"mmio_write",
//!                         "accesses": [["0xrip", "0xport or gpa"], ...] (the first 16) } ] } }
//! ```
//! Version 4 adds each exit's optional `"stack": {"id": N, "method": "table"|"frame_pointer"|
//! "table+frame_pointer", "frames": ["0x..", ...]}` (the guest stack walked at the exit by
//! `record --stack-depth`, return addresses innermost first) and `meta.stacks` (depth, unwind
//! table, slide); a file without stacks is written as version 3 or 2.
//! Version 3 adds `records_file`: the exits of `record --records` (and `import`) streamed to a
//! sidecar file as they arrived (format: [`super::record_stream`]), instead of the in-memory
//! `records` array; `name` is relative to the recording's directory (or absolute). A file
//! without `records_file` is written as version 2, so older kvmprof still reads it.
//! `runs` (runs of successive I/O exits, `kvmprof advise`) was added within version 2: files
//! without it read as before, with no run data. So was `meta.partial`: absent means false.
//! Version 1 (kvmprof before the log-linear histogram) is still read: its `hist` is 32 counts
//! of log2 buckets (bucket i = [2^i, 2^(i+1)) ns), each moved to the log-linear bucket holding
//! the value version 1 reported for it (its geometric midpoint), so old percentiles read as
//! they printed then.
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use profiler_common::{detail, hist_bucket_of_legacy, ExitStats, HIST_BUCKETS, LEGACY_LOG2_BUCKETS};
use serde::{Deserialize, Serialize};

use super::exit::{Access, Exit, GuestStack, Isa, Reason, StackMethod};
use super::record_stream;
use super::profile::{Meta, Profile, Record, Run, RunAccess, Runs, ThreadInfo};
use profiler_common::parse_hex;

pub const FORMAT: &str = "kvmprof-recording";
pub const VERSION: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot read {path}")]
    Io { path: String, source: std::io::Error },
    #[error("cannot write recording {path}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} is truncated (it ends at byte {len} in the middle of the data): the recording was cut short; record it again")]
    Truncated { path: String, len: u64 },
    #[error("{path} is not a kvmprof recording: {why}")]
    NotARecording { path: String, why: String },
    #[error("{path} is recording format version {found}, newer than this kvmprof reads (up to {VERSION}): upgrade kvmprof")]
    NewerVersion { path: String, found: u64 },
    #[error("{path} is a corrupt kvmprof recording: {why}")]
    Corrupt { path: String, why: String },
    #[error("{path}: {source}")]
    RecordStream { path: String, stream: String, source: record_stream::StreamError },
}

/// The file's exit row: numbers as the format spells them (hex strings, names).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExitRow {
    tgid: u32,
    tid: u32,
    vcpu: Option<u32>,
    isa: String,
    reason: u32,
    reason_name: String,
    rip: String,
    detail_kind: String,
    detail: String,
    count: u64,
    total_ns: u64,
    /// Version 2: `[[bucket, count], ...]`; version 1: 32 log2 counts.
    hist: serde_json::Value,
    #[serde(default)]
    caller_rip: Option<String>,
    /// Version 4: the guest stack walked at the exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stack: Option<StackRow>,
}

/// Version 4: `{"id": N, "method": "table"|"frame_pointer"|"table+frame_pointer",
/// "frames": ["0x..", ...]}` (return addresses, innermost first).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StackRow {
    id: u32,
    method: String,
    frames: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    format: String,
    version: u32,
    meta: Meta,
    threads: BTreeMap<u32, ThreadInfo>,
    exits: Vec<ExitRow>,
    records: Option<Vec<[u64; 3]>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    runs: Option<RunsFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    records_file: Option<RecordsFileRow>,
}

/// Version 3: where the streamed records are ([`super::record_stream`]).
#[derive(Debug, Serialize, Deserialize)]
struct RecordsFileRow {
    name: String,
    format: String,
    version: u32,
    records: u64,
    dropped_per_cpu: Vec<u64>,
}

const RECORDS_FORMAT: &str = "kvmprof-records";

#[derive(Debug, Serialize, Deserialize)]
struct RunsFile {
    max_gap_ns: u64,
    lost: u64,
    list: Vec<RunRow>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RunRow {
    tgid: u32,
    length: u32,
    hash: String,
    occurrences: u64,
    total_ns: u64,
    kind: String,
    accesses: Vec<[String; 2]>,
}

impl RunsFile {
    fn new(r: &Runs) -> RunsFile {
        let list = r
            .list
            .iter()
            .map(|run| RunRow {
                tgid: run.tgid,
                length: run.length,
                hash: hex(run.hash),
                occurrences: run.occurrences,
                total_ns: run.total_ns,
                kind: DETAIL_KINDS.iter().find(|(k, _)| *k == run.kind).map_or("none", |(_, n)| n).to_string(),
                accesses: run.accesses.iter().map(|a| [hex(a.rip), hex(a.addr)]).collect(),
            })
            .collect();
        RunsFile { max_gap_ns: r.max_gap_ns, lost: r.lost, list }
    }

    fn decode(&self) -> Result<Runs, String> {
        let list = self
            .list
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let bad = |what: &str| format!("run {i}: bad {what}");
                let kind = DETAIL_KINDS.iter().find(|(k, n)| *n == row.kind && *k != detail::NONE).map(|(k, _)| *k).ok_or_else(|| bad("kind"))?;
                let accesses = row
                    .accesses
                    .iter()
                    .map(|[rip, addr]| Some(RunAccess { rip: parse_hex(rip)?, addr: parse_hex(addr)? }))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("access"))?;
                if accesses.len() != (row.length as usize).min(profiler_common::runs::RUN_ACCESSES) {
                    return Err(bad("accesses (their number does not match the length)"));
                }
                Ok(Run {
                    tgid: row.tgid,
                    length: row.length,
                    hash: parse_hex(&row.hash).ok_or_else(|| bad("hash"))?,
                    occurrences: row.occurrences,
                    total_ns: row.total_ns,
                    kind,
                    accesses,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Runs { max_gap_ns: self.max_gap_ns, lost: self.lost, list })
    }
}

const DETAIL_KINDS: &[(u8, &str)] = &[
    (detail::NONE, "none"),
    (detail::PORT_IN, "port_in"),
    (detail::PORT_OUT, "port_out"),
    (detail::MMIO_READ, "mmio_read"),
    (detail::MMIO_WRITE, "mmio_write"),
];

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

impl ExitRow {
    fn new(e: &Exit) -> ExitRow {
        let (kind, value) = e.access.to_detail();
        let hist: Vec<[u64; 2]> =
            e.stats.hist.iter().enumerate().filter(|(_, c)| **c > 0).map(|(i, c)| [i as u64, *c]).collect();
        ExitRow {
            tgid: e.tgid,
            tid: e.tid,
            vcpu: e.vcpu,
            isa: e.reason.isa.name().to_string(),
            reason: e.reason.code,
            reason_name: e.reason.name(),
            rip: hex(e.rip),
            detail_kind: DETAIL_KINDS.iter().find(|(k, _)| *k == kind).map_or("none", |(_, n)| n).to_string(),
            detail: hex(value),
            count: e.stats.count,
            total_ns: e.stats.total_ns,
            hist: serde_json::to_value(hist).unwrap_or_default(),
            caller_rip: e.caller.map(hex),
            stack: e.stack.as_ref().map(|st| StackRow { id: st.id, method: st.method.name().into(), frames: st.frames.iter().map(|f| hex(*f)).collect() }),
        }
    }

    fn decode(&self, i: usize, version: u32) -> Result<Exit, String> {
        let bad = |what: &str| format!("exit {i}: bad {what}");
        let isa = Isa::from_name(&self.isa).ok_or_else(|| bad("isa"))?;
        let kind = DETAIL_KINDS.iter().find(|(_, n)| *n == self.detail_kind).map(|(k, _)| *k).ok_or_else(|| bad("detail_kind"))?;
        let rip = parse_hex(&self.rip).ok_or_else(|| bad("rip"))?;
        let value = parse_hex(&self.detail).ok_or_else(|| bad("detail"))?;
        let access = Access::from_detail(kind, value).map_err(|e| format!("exit {i}: {e}"))?;
        let caller = match &self.caller_rip {
            Some(c) => Some(parse_hex(c).ok_or_else(|| bad("caller_rip"))?),
            None => None,
        };
        let stack = match &self.stack {
            Some(st) => Some(GuestStack {
                id: st.id,
                method: StackMethod::from_name(&st.method).ok_or_else(|| bad("stack method"))?,
                frames: st.frames.iter().map(|f| parse_hex(f)).collect::<Option<Vec<_>>>().ok_or_else(|| bad("stack frame"))?,
            }),
            None => None,
        };
        let hist = if version < 2 { legacy_hist(&self.hist) } else { sparse_hist(&self.hist) }.map_err(|e| format!("exit {i}: {e}"))?;
        // Equal, except for exits counted after the in-kernel map filled: those have no
        // histogram (profiler_common::CountTime), so the histogram may hold fewer.
        let in_hist = hist.iter().try_fold(0u64, |a, b| a.checked_add(*b));
        if in_hist.is_none_or(|n| n > self.count) {
            return Err(format!("exit {i}: histogram counts add up to more than count {}", self.count));
        }
        Ok(Exit {
            tgid: self.tgid,
            tid: self.tid,
            vcpu: self.vcpu,
            reason: Reason { isa, code: self.reason },
            rip,
            access,
            caller,
            stats: ExitStats { count: self.count, total_ns: self.total_ns, hist },
            stack,
        })
    }
}

fn sparse_hist(v: &serde_json::Value) -> Result<[u64; HIST_BUCKETS], String> {
    let pairs: Vec<[u64; 2]> = serde_json::from_value(v.clone()).map_err(|_| "histogram is not [[bucket, count], ...]".to_string())?;
    let mut hist = [0u64; HIST_BUCKETS];
    for [b, c] in pairs {
        let slot = usize::try_from(b).ok().and_then(|b| hist.get_mut(b)).ok_or_else(|| format!("histogram bucket {b} is out of range"))?;
        *slot = slot.checked_add(c).ok_or("histogram count overflows")?;
    }
    Ok(hist)
}

fn legacy_hist(v: &serde_json::Value) -> Result<[u64; HIST_BUCKETS], String> {
    let counts: Vec<u64> = serde_json::from_value(v.clone()).map_err(|_| "histogram is not a list of counts".to_string())?;
    if counts.len() != LEGACY_LOG2_BUCKETS {
        return Err(format!("histogram has {} buckets, expected {LEGACY_LOG2_BUCKETS}", counts.len()));
    }
    let mut hist = [0u64; HIST_BUCKETS];
    for (i, c) in counts.into_iter().enumerate() {
        let slot = &mut hist[hist_bucket_of_legacy(i)];
        *slot = slot.checked_add(c).ok_or("histogram count overflows")?;
    }
    Ok(hist)
}

/// Writes to a temporary file beside `path`, then renames: a crash never leaves half a file,
/// and an older file at `path` survives a failed write (full disk).
pub fn save(profile: &Profile, path: &Path) -> Result<(), RecordingError> {
    let tmp = path.with_extension("kvmprof-tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(fs::File::create(&tmp)?);
        write_to(profile, path, &mut f)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|source| {
        let _ = fs::remove_file(&tmp);
        RecordingError::Write { path: path.display().to_string(), source }
    })
}

/// The recording as the file holds it (what [`save`] writes, for a file in the current
/// directory).
pub fn to_bytes(profile: &Profile) -> Vec<u8> {
    let mut v = Vec::new();
    write_to(profile, Path::new("recording.kvmprof"), &mut v).expect("writing JSON to memory cannot fail");
    v
}

/// Writes the recording that will be at `path` (a record stream is named relative to it).
fn write_to(profile: &Profile, path: &Path, mut w: impl Write) -> std::io::Result<()> {
    let records_file = profile.records_file.as_ref().map(|s| RecordsFileRow {
        name: stream_name(&s.path, path),
        format: RECORDS_FORMAT.into(),
        version: record_stream::VERSION,
        records: s.records,
        dropped_per_cpu: s.dropped_per_cpu.clone(),
    });
    let file = File {
        format: FORMAT.into(),
        // The lowest version that holds this content, so older readers read what they can.
        version: if profile.exits.iter().any(|e| e.stack.is_some()) {
            4
        } else if records_file.is_some() {
            3
        } else {
            2
        },
        meta: profile.meta.clone(),
        threads: profile.threads.clone(),
        exits: profile.exits.iter().map(ExitRow::new).collect(),
        records: profile.records.as_ref().map(|rs| rs.iter().map(|r| [r.start_ns, r.duration_ns, r.exit as u64]).collect()),
        runs: profile.runs.as_ref().map(RunsFile::new),
        records_file,
    };
    serde_json::to_writer(&mut w, &file)?;
    w.write_all(b"\n")
}

/// The stream's name as the recording at `recording` refers to it: relative when the two are
/// in one directory (so they move together), else absolute.
fn stream_name(stream: &Path, recording: &Path) -> String {
    let dir = |p: &Path| p.parent().map(|d| d.canonicalize().unwrap_or_else(|_| d.to_path_buf()));
    match (stream.file_name(), dir(stream) == dir(recording)) {
        (Some(name), true) => name.to_string_lossy().into_owned(),
        _ => std::path::absolute(stream).unwrap_or_else(|_| stream.to_path_buf()).display().to_string(),
    }
}

/// Reads a recording; a version 3 recording's record stream is checked (header, END block,
/// count) but not read: see [`for_each_record`].
pub fn load(path: &Path) -> Result<Profile, RecordingError> {
    let p = path.display().to_string();
    let bytes = fs::read(path).map_err(|source| RecordingError::Io { path: p.clone(), source })?;
    let (mut profile, stream) = decode(&bytes, &p)?;
    if let Some(row) = stream {
        let dir = path.parent().unwrap_or(Path::new("."));
        let stream_path = dir.join(&row.name);
        let stream_err = |source| RecordingError::RecordStream { path: p.clone(), stream: stream_path.display().to_string(), source };
        let info = record_stream::info(&stream_path).map_err(stream_err)?;
        if info.records != row.records {
            let why = format!("it holds {} records, the recording says {}", info.records, row.records);
            return Err(stream_err(record_stream::StreamError::Corrupt { path: stream_path.display().to_string(), why }));
        }
        profile.records_file = Some(info);
    }
    Ok(profile)
}

/// Every record of a profile, in order, from its in-memory list (version 1/2 recordings,
/// snapshots) or streamed from its record stream file in bounded memory (version 3). Returns
/// how many were read. A profile without records reads none.
pub fn for_each_record(profile: &Profile, mut each: impl FnMut(Record)) -> Result<u64, RecordingError> {
    if let Some(records) = &profile.records {
        records.iter().for_each(|r| each(*r));
        return Ok(records.len() as u64);
    }
    let Some(info) = &profile.records_file else { return Ok(0) };
    let index: std::collections::HashMap<_, usize> = profile.exits.iter().enumerate().map(|(i, e)| (e.key(), i)).collect();
    let sp = info.path.display().to_string();
    let mut unknown = None;
    let read = record_stream::for_each(&info.path, |key, start_ns, duration_ns| match index.get(key) {
        Some(&exit) => each(Record { start_ns, duration_ns, exit }),
        None => {
            unknown.get_or_insert(*key);
        }
    })
    .map_err(|source| RecordingError::RecordStream { path: "the recording".into(), stream: sp.clone(), source })?;
    if let Some(k) = unknown {
        let why = format!("a record's exit site (rip {:#x}, tid {}) is not in the recording", k.rip, k.tid);
        return Err(RecordingError::RecordStream { path: "the recording".into(), stream: sp.clone(), source: record_stream::StreamError::Corrupt { path: sp, why } });
    }
    Ok(read.records)
}

/// [`load`], then every record of the record stream read and checked (block checksums, exit
/// sites): `report` and `diff` refuse a damaged stream rather than print from half of it.
pub fn load_checked(path: &Path) -> Result<Profile, RecordingError> {
    let profile = load(path)?;
    if profile.records_file.is_some() {
        for_each_record(&profile, |_| {}).map_err(|e| match e {
            RecordingError::RecordStream { stream, source, .. } => RecordingError::RecordStream { path: path.display().to_string(), stream, source },
            e => e,
        })?;
    }
    Ok(profile)
}

/// [`for_each_record`] into a list (for small recordings and tests).
pub fn records(profile: &Profile) -> Result<Vec<Record>, RecordingError> {
    let mut v = Vec::new();
    for_each_record(profile, |r| v.push(r))?;
    Ok(v)
}

/// Decodes a recording held in memory; `p` names it in errors.
/// A version 3 recording's record stream is not resolved here (see [`load`]).
pub fn from_bytes(bytes: &[u8], p: &str) -> Result<Profile, RecordingError> {
    decode(bytes, p).map(|(profile, _)| profile)
}

fn decode(bytes: &[u8], p: &str) -> Result<(Profile, Option<RecordsFileRow>), RecordingError> {
    // Parse untyped first, so the format and version are checked before any field is.
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            RecordingError::NotARecording { path: p.into(), why: "the file is empty".into() }
        } else if e.is_eof() {
            RecordingError::Truncated { path: p.into(), len: bytes.len() as u64 }
        } else {
            RecordingError::NotARecording { path: p.into(), why: format!("not JSON ({e})") }
        }
    })?;
    if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(RecordingError::NotARecording { path: p.into(), why: format!("no \"format\": \"{FORMAT}\" field") });
    }
    let corrupt = |why: String| RecordingError::Corrupt { path: p.into(), why };
    let version = value.get("version").and_then(|v| v.as_u64()).ok_or_else(|| corrupt("no version".into()))?;
    if version > VERSION as u64 {
        return Err(RecordingError::NewerVersion { path: p.into(), found: version });
    }
    let file: File = serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
    let exits = file.exits.iter().enumerate().map(|(i, row)| row.decode(i, version as u32)).collect::<Result<Vec<_>, _>>().map_err(corrupt)?;
    let records = match file.records {
        None => None,
        Some(rs) => Some(
            rs.iter()
                .map(|r| match usize::try_from(r[2]).ok().filter(|i| *i < exits.len()) {
                    Some(exit) => Ok(Record { start_ns: r[0], duration_ns: r[1], exit }),
                    None => Err(corrupt(format!("a record points at exit {} of {}", r[2], exits.len()))),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let runs = file.runs.as_ref().map(RunsFile::decode).transpose().map_err(corrupt)?;
    if let Some(row) = &file.records_file {
        if row.format != RECORDS_FORMAT || row.name.is_empty() {
            return Err(corrupt(format!("records_file is not a {RECORDS_FORMAT} file")));
        }
    }
    Ok((Profile { meta: file.meta, threads: file.threads, exits, records, runs, records_file: None }, file.records_file))
}
