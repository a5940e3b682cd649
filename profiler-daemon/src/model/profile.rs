//! A profile: every exit site of a recording, a live snapshot or an import, with what is known
//! of the run and its threads. What `Session::snapshot()`/`finish()` return, what a recording
//! file holds, and what every analysis takes.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::exit::{Exit, Source};

/// How and where the exits were collected, and what was lost.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub source: Source,
    /// `live`, `import:ftrace` or `import:perf-script`.
    pub origin: String,
    pub tool_version: String,
    pub kernel: String,
    pub host: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// The traced process, when one was (not for "every VM").
    pub pid: Option<u32>,
    pub command: Option<Vec<String>>,
    pub command_status: Option<i32>,
    pub records_requested: bool,
    /// Records the ring buffer had no room for (they are in the totals).
    pub records_dropped: u64,
    /// Exits not counted because the in-kernel exit map was full.
    pub exit_keys_full: u64,
    /// Events ignored because the in-kernel thread map was full.
    pub threads_full: u64,
    /// Exits still open when recording stopped (e.g. a final HLT), charged with the time
    /// measured until then.
    pub unfinished_exits: u64,
    /// A checkpoint `kvmprof record` wrote while it ran (live::checkpoint): the final file
    /// was never written (SIGKILL, OOM, power loss), so the data ends at `end_unix_ns`, when
    /// the checkpoint was taken. Absent (false) in a finished recording; added within
    /// format version 2 (older readers ignore it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// How the guest memory map for callers was found (QEMU, automatically), or why none
    /// could be verified (then callers are `[unknown]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_memory: Option<GuestMemoryOrigin>,
    /// How guest stacks were walked (`record --stack-depth` above 1); absent: callers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks: Option<StackInfo>,
}

/// [`Meta::stacks`]: what the stacks of a recording were walked with.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StackInfo {
    /// Return addresses walked per exit at most.
    pub depth: u32,
    /// Where the unwind table came from (`orc`, `cfi`), or None: frame pointers only.
    pub table: Option<String>,
    pub table_entries: u64,
    /// The KASLR slide the table was moved by (runtime − link address).
    pub slide: i64,
    /// Stacks not kept because the in-kernel stack map was full (their exits keep a caller).
    pub lost: u64,
    /// With `record --kaslr-offset auto` and no kallsyms: how the slide was found from the
    /// first exits (or why it was not), one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide_from_exits: Option<String>,
    /// With the slide found from the exits: how many exits came before the stacks started
    /// (they have their caller only). None: from the first exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks_from_exit: Option<u64>,
}

/// [`Meta::guest_memory`]: one line each.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum GuestMemoryOrigin {
    Verified(String),
    Unverified(String),
}

/// A traced thread (a vCPU thread of a VMM).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ThreadInfo {
    pub tgid: u32,
    pub comm: String,
    pub vcpu: Option<u32>,
    /// The thread had exited when the profile was taken.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
    /// The name of the VM process the thread belongs to (`-name`, else its comm), read when
    /// the thread was first seen (`report --by vm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_name: Option<String>,
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
        ThreadInfo { tgid, comm, vcpu, ended: false, vm_name: None }
    }
}

/// One streamed exit (`record --records`): when it began, how long it took, and its site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// CLOCK_MONOTONIC ns (live) or the trace's timestamp (import).
    pub start_ns: u64,
    pub duration_ns: u64,
    /// Index into [`Profile::exits`].
    pub exit: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    pub meta: Meta,
    pub threads: BTreeMap<u32, ThreadInfo>,
    pub exits: Vec<Exit>,
    /// Every exit in order, when records were asked for.
    pub records: Option<Vec<Record>>,
    /// Runs of successive I/O exits (`kvmprof advise`); `None` = no run data (a recording
    /// made before run detection).
    pub runs: Option<Runs>,
    /// The record stream file the records were written to as they arrived (`record
    /// --records`, `import`): read with `recording::for_each_record`.
    pub records_file: Option<super::record_stream::StreamInfo>,
}

/// Runs of successive I/O exits by signature (see [`profiler_common::runs`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Runs {
    /// The gap that still extended a run: an exit at most this long after the previous
    /// exit's re-entry joined its run.
    pub max_gap_ns: u64,
    /// Runs the in-kernel map had no room for.
    pub lost: u64,
    pub list: Vec<Run>,
}

/// One run signature: its accesses in order (the first [`profiler_common::runs::RUN_ACCESSES`]
/// of them), its length, how often it occurred and the time of its exits.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub tgid: u32,
    pub length: u32,
    pub hash: u64,
    pub occurrences: u64,
    pub total_ns: u64,
    /// `profiler_common::detail` kind of every exit of the run.
    pub kind: u8,
    pub accesses: Vec<RunAccess>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAccess {
    pub rip: u64,
    /// Port or guest-physical address.
    pub addr: u64,
}

impl Run {
    pub fn from_stats(key: &profiler_common::runs::RunKey, v: &profiler_common::runs::RunStats) -> Run {
        let n = (key.length as usize).min(profiler_common::runs::RUN_ACCESSES);
        Run {
            tgid: key.tgid,
            length: key.length,
            hash: key.hash,
            occurrences: v.occurrences,
            total_ns: v.total_ns,
            kind: v.kind,
            accesses: v.accesses[..n].iter().map(|a| RunAccess { rip: a.rip, addr: a.addr() }).collect(),
        }
    }

    pub fn has_reads(&self) -> bool {
        matches!(self.kind, profiler_common::detail::PORT_IN | profiler_common::detail::MMIO_READ)
    }

    pub fn is_port(&self) -> bool {
        profiler_common::detail::is_port(self.kind)
    }
}

impl Profile {
    pub fn total_exits(&self) -> u64 {
        self.exits.iter().map(|e| e.stats.count).sum()
    }

    pub fn total_time_ns(&self) -> u64 {
        self.exits.iter().map(|e| e.stats.total_ns).sum()
    }

    /// The vCPU index of an exit: from the tracepoint, else from its thread's name.
    pub fn vcpu_of(&self, e: &Exit) -> Option<u32> {
        e.vcpu.or_else(|| self.threads.get(&e.tid).and_then(|t| t.vcpu))
    }

    /// The same profile restricted to the exits `keep` selects (records dropped).
    pub fn filtered(&self, keep: impl Fn(&Exit) -> bool) -> Profile {
        Profile {
            meta: self.meta.clone(),
            threads: self.threads.clone(),
            exits: self.exits.iter().filter(|e| keep(e)).cloned().collect(),
            records: None,
            runs: self.runs.clone(),
            records_file: None,
        }
    }
}
