//! The recording file written by `kvmprof record` and `kvmprof import`.
//!
//! Format (JSON, one object; `version` is bumped on any incompatible change):
//! ```text
//! { "format": "kvmprof-recording", "version": 1,
//!   "meta":    { "source": "hw"|"emulated", "origin": "live"|"import:ftrace"|"import:perf-script",
//!                "tool_version", "kernel", "host", "start_unix_ns", "end_unix_ns",
//!                "pid": N|null, "command": [..]|null, "command_status": N|null,
//!                "records_requested": bool, "records_dropped": N, "exit_keys_full": N,
//!                "threads_full": N, "unfinished_exits": N },
//!   "threads": { "<tid>": { "tgid": N, "comm": "vcpu0", "vcpu": N|null } },
//!   "exits":   [ { "tgid", "tid", "vcpu": N|null, "isa": "kvm_exit"|"vmx"|"svm", "reason": N,
//!                  "reason_name", "rip": "0x..", "detail_kind": "none"|"port_in"|"port_out"|
//!                  "mmio_read"|"mmio_write", "detail": "0x..", "count", "total_ns",
//!                  "hist": [32 counts: bucket i = [2^i, 2^(i+1)) ns],
//!                  "caller_rip": "0x.."|null (optional; null/absent = unknown caller) } ],
//!   "records": [ [start_ns, duration_ns, index into "exits"], ... ] | null }
//! ```
//! `unfinished_exits` counts exits still open when recording stopped (e.g. the final HLT of a
//! guest that never re-entered): they are in `exits` with the time measured so far.
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use profiler_common::{detail, isa, ExitKey, ExitStats, HIST_BUCKETS, NO_VCPU, UNKNOWN_CALLER};
use serde::{Deserialize, Serialize};

use crate::reasons;

pub const FORMAT: &str = "kvmprof-recording";
pub const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot read {path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("{path} is truncated (it ends at byte {len} in the middle of the data): the recording was cut short; record it again")]
    Truncated { path: String, len: u64 },
    #[error("{path} is not a kvmprof recording: {why}")]
    NotARecording { path: String, why: String },
    #[error("{path} is recording format version {found}, newer than this kvmprof reads (up to {VERSION}): upgrade kvmprof")]
    NewerVersion { path: String, found: u64 },
    #[error("{path} is a corrupt kvmprof recording: {why}")]
    Corrupt { path: String, why: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub source: String,
    pub origin: String,
    pub tool_version: String,
    pub kernel: String,
    pub host: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub pid: Option<u32>,
    pub command: Option<Vec<String>>,
    pub command_status: Option<i32>,
    pub records_requested: bool,
    pub records_dropped: u64,
    pub exit_keys_full: u64,
    pub threads_full: u64,
    pub unfinished_exits: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ThreadInfo {
    pub tgid: u32,
    pub comm: String,
    pub vcpu: Option<u32>,
}

impl ThreadInfo {
    /// Names a thread from its kernel `comm`; the vCPU index is read from the names VMMs give
    /// their vCPU threads: tinyvmm's `vcpu0`, QEMU's `CPU 0/KVM`.
    pub fn from_comm(tgid: u32, comm: &[u8]) -> ThreadInfo {
        let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
        let comm = String::from_utf8_lossy(&comm[..end]).into_owned();
        let vcpu = comm
            .strip_prefix("vcpu")
            .or_else(|| comm.strip_prefix("CPU ").and_then(|r| r.strip_suffix("/KVM")))
            .and_then(|n| n.parse().ok());
        ThreadInfo { tgid, comm, vcpu }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitRow {
    pub tgid: u32,
    pub tid: u32,
    pub vcpu: Option<u32>,
    pub isa: String,
    pub reason: u32,
    pub reason_name: String,
    pub rip: String,
    pub detail_kind: String,
    pub detail: String,
    pub count: u64,
    pub total_ns: u64,
    pub hist: Vec<u64>,
    /// Return address in the guest caller of the exiting function; `None` = unknown (absent
    /// in recordings made before caller attribution).
    #[serde(default)]
    pub caller_rip: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recording {
    pub format: String,
    pub version: u32,
    pub meta: Meta,
    pub threads: BTreeMap<u32, ThreadInfo>,
    pub exits: Vec<ExitRow>,
    pub records: Option<Vec<[u64; 3]>>,
}

/// One decoded exit row: the recording's strings parsed back to the shared key.
#[derive(Debug, Clone)]
pub struct Exit {
    pub key: ExitKey,
    pub stats: ExitStats,
}

const DETAIL_KINDS: &[(u8, &str)] = &[
    (detail::NONE, "none"),
    (detail::PORT_IN, "port_in"),
    (detail::PORT_OUT, "port_out"),
    (detail::MMIO_READ, "mmio_read"),
    (detail::MMIO_WRITE, "mmio_write"),
];

pub fn detail_kind_name(kind: u8) -> &'static str {
    DETAIL_KINDS.iter().find(|(k, _)| *k == kind).map(|(_, n)| *n).unwrap_or("none")
}

fn isa_code(name: &str) -> Option<u8> {
    [isa::KVM_EXIT, isa::VMX, isa::SVM].into_iter().find(|i| reasons::isa_name(*i) == name)
}

pub fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok()
}

impl ExitRow {
    pub fn new(key: &ExitKey, stats: &ExitStats) -> ExitRow {
        ExitRow {
            tgid: key.tgid,
            tid: key.tid,
            vcpu: (key.vcpu != NO_VCPU).then_some(key.vcpu),
            isa: reasons::isa_name(key.isa).to_string(),
            reason: key.reason,
            reason_name: reasons::name(key.isa, key.reason),
            rip: format!("{:#x}", key.rip),
            detail_kind: detail_kind_name(key.detail_kind).to_string(),
            detail: format!("{:#x}", key.detail),
            count: stats.count,
            total_ns: stats.total_ns,
            hist: stats.hist.to_vec(),
            caller_rip: (key.caller != UNKNOWN_CALLER).then(|| format!("{:#x}", key.caller)),
        }
    }

    fn decode(&self, i: usize) -> Result<Exit, String> {
        let bad = |what: &str| format!("exit {i}: bad {what}");
        let isa = isa_code(&self.isa).ok_or_else(|| bad("isa"))?;
        let detail_kind = DETAIL_KINDS.iter().find(|(_, n)| *n == self.detail_kind).map(|(k, _)| *k).ok_or_else(|| bad("detail_kind"))?;
        let rip = parse_hex(&self.rip).ok_or_else(|| bad("rip"))?;
        let detail = parse_hex(&self.detail).ok_or_else(|| bad("detail"))?;
        let caller = match &self.caller_rip {
            Some(c) => parse_hex(c).ok_or_else(|| bad("caller_rip"))?,
            None => UNKNOWN_CALLER,
        };
        if self.hist.len() != HIST_BUCKETS {
            return Err(format!("exit {i}: histogram has {} buckets, expected {HIST_BUCKETS}", self.hist.len()));
        }
        let mut hist = [0u64; HIST_BUCKETS];
        hist.copy_from_slice(&self.hist);
        let in_hist = hist.iter().try_fold(0u64, |a, b| a.checked_add(*b));
        if in_hist != Some(self.count) {
            return Err(format!("exit {i}: histogram counts do not add up to count {}", self.count));
        }
        let key = ExitKey {
            rip,
            detail,
            caller,
            tgid: self.tgid,
            tid: self.tid,
            vcpu: self.vcpu.unwrap_or(NO_VCPU),
            reason: self.reason,
            isa,
            detail_kind,
            _pad: [0; 6],
        };
        Ok(Exit { key, stats: ExitStats { count: self.count, total_ns: self.total_ns, hist } })
    }
}

impl Recording {
    pub fn new(meta: Meta) -> Recording {
        Recording { format: FORMAT.into(), version: VERSION, meta, threads: BTreeMap::new(), exits: Vec::new(), records: None }
    }

    /// Writes to a temporary file beside `path`, then renames: a crash never leaves half a file.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("kvmprof-tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(fs::File::create(&tmp)?);
            serde_json::to_writer(&mut f, self)?;
            f.write_all(b"\n")?;
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            anyhow::anyhow!("cannot write recording {}: {e}", path.display())
        })
    }

    pub fn load(path: &Path) -> Result<Recording, RecordingError> {
        let p = path.display().to_string();
        let bytes = fs::read(path).map_err(|err| RecordingError::Io { path: p.clone(), err })?;
        Self::from_bytes(&bytes, &p)
    }

    pub fn from_bytes(bytes: &[u8], p: &str) -> Result<Recording, RecordingError> {
        // Parse untyped first, so the format and version are checked before any field is.
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            if e.is_eof() && !bytes.iter().all(u8::is_ascii_whitespace) {
                RecordingError::Truncated { path: p.into(), len: bytes.len() as u64 }
            } else if bytes.iter().all(u8::is_ascii_whitespace) {
                RecordingError::NotARecording { path: p.into(), why: "the file is empty".into() }
            } else {
                RecordingError::NotARecording { path: p.into(), why: format!("not JSON ({e})") }
            }
        })?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(RecordingError::NotARecording { path: p.into(), why: format!("no \"format\": \"{FORMAT}\" field") });
        }
        let version = value.get("version").and_then(|v| v.as_u64()).ok_or_else(|| RecordingError::Corrupt { path: p.into(), why: "no version".into() })?;
        if version > VERSION as u64 {
            return Err(RecordingError::NewerVersion { path: p.into(), found: version });
        }
        let rec: Recording = serde_json::from_value(value).map_err(|e| RecordingError::Corrupt { path: p.into(), why: e.to_string() })?;
        rec.decode_exits().map_err(|why| RecordingError::Corrupt { path: p.into(), why })?;
        if let Some(records) = &rec.records {
            if let Some(r) = records.iter().find(|r| r[2] as usize >= rec.exits.len()) {
                return Err(RecordingError::Corrupt { path: p.into(), why: format!("a record points at exit {} of {}", r[2], rec.exits.len()) });
            }
        }
        Ok(rec)
    }

    pub fn decode_exits(&self) -> Result<Vec<Exit>, String> {
        self.exits.iter().enumerate().map(|(i, row)| row.decode(i)).collect()
    }

    /// The exits, decoded; `load` has validated them already.
    pub fn exits(&self) -> Vec<Exit> {
        self.decode_exits().unwrap_or_default()
    }
}
