//! `kvmprof import`: turns recorded KVM tracepoint text (ftrace's `trace`/`trace_pipe`, or
//! `perf script` after `perf record -e 'kvm:*'`) into a recording, by replaying the events
//! through the same state machine the eBPF programs run.
//!
//! Lines understood (anything else is skipped and counted):
//! ```text
//! ftrace:      qemu-system-x86-4242  [001] d..2. 1234.567890: kvm_exit: vcpu 0 reason IO_INSTRUCTION rip 0x... info1 ...
//! ftrace+tgid: qemu-system-x86-4242 (4240) [001] ..... 1234.567900: kvm_entry: vcpu 0, rip 0x...
//! perf script: qemu-system-x86 4242 [001] 1234.567890: kvm:kvm_exit: vcpu 0 reason io rip 0x... info1 ...
//! ```
use std::collections::BTreeMap;
use std::io::BufRead;


use anyhow::{bail, Context, Result};
use profiler_common::{detail, isa, kvm_exit, Thread, NO_VCPU};

use crate::model::aggregate::{Aggregate, Threads};
use crate::model::{reasons, Meta, Profile, Source, ThreadInfo};
use profiler_common::parse_hex as hex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    /// `perf script` output of `perf record -e 'kvm:*'`.
    PerfScript,
    /// ftrace text from /sys/kernel/tracing/trace or trace_pipe.
    Ftrace,
}

impl TextFormat {
    pub fn name(self) -> &'static str {
        match self {
            TextFormat::PerfScript => "perf-script",
            TextFormat::Ftrace => "ftrace",
        }
    }
}

/// One parsed trace line.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub comm: &'a str,
    pub tid: u32,
    pub tgid: Option<u32>,
    pub ts_ns: u64,
    pub name: &'a str,
    pub args: &'a str,
}

/// Splits a trace line into task, timestamp, event name and arguments.
pub fn parse_line(line: &str) -> Option<Event<'_>> {
    // The event marker: ": kvm_exit: " (ftrace) or ": kvm:kvm_exit: " (perf).
    let at = line.find(": kvm")?;
    let after = &line[at + 2..];
    let colon = after.find(':')?;
    let mut name = &after[..colon];
    let mut args = &after[colon + 1..];
    if name == "kvm" {
        let c2 = args.find(':')?;
        name = &args[..c2];
        args = &args[c2 + 1..];
    }
    let args = args.trim();
    let head = &line[..at];
    // Timestamp: the last word before the marker, "1234.567890".
    let (head, ts) = head.trim_end().rsplit_once(char::is_whitespace)?;
    let ts_ns = parse_timestamp(ts)?;
    // Drop "[001]" and, for ftrace, the flags word "d..2.".
    let cpu_at = head.rfind('[')?;
    let task = head[..cpu_at].trim();
    let (task, tgid) = match task.strip_suffix(')').and_then(|t| t.rsplit_once('(')) {
        Some((t, g)) => (t.trim(), g.trim().parse().ok()),
        None => (task, None),
    };
    // perf: "comm tid" or "comm pid/tid"; ftrace: "comm-tid". Comms may hold spaces, '/' and
    // '-' ("CPU 0/KVM-4242"), so the perf forms must parse whole before they are believed.
    let perf = || -> Option<(&str, u32, Option<u32>)> {
        let (c, ids) = task.rsplit_once(char::is_whitespace)?;
        match ids.split_once('/') {
            Some((p, t)) => Some((c.trim(), t.parse().ok()?, Some(p.parse().ok()?))),
            None => Some((c.trim(), ids.parse().ok()?, None)),
        }
    };
    let (comm, tid, pid) = perf().or_else(|| split_dash(task).map(|(c, t)| (c, t, None)))?;
    let tgid = pid.or(tgid);
    Some(Event { comm, tid, tgid, ts_ns, name, args })
}

fn split_dash(task: &str) -> Option<(&str, u32)> {
    let (c, t) = task.rsplit_once('-')?;
    Some((c, t.parse().ok()?))
}

fn parse_timestamp(ts: &str) -> Option<u64> {
    let ts = ts.trim_end_matches(':');
    let (s, frac) = ts.split_once('.').unwrap_or((ts, "0"));
    if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ns_frac: u64 = format!("{frac:0<9}").parse().ok()?;
    s.parse::<u64>().ok()?.checked_mul(1_000_000_000)?.checked_add(ns_frac)
}

/// The value after `key ` in `args`, up to the next space (or `,`).
fn arg<'a>(args: &'a str, key: &str) -> Option<&'a str> {
    let mut words = args.split([' ', ',']).filter(|w| !w.is_empty());
    while let Some(w) = words.next() {
        if w == key {
            return words.next();
        }
    }
    None
}

/// `kvm_exit` arguments: "vcpu 0 reason IO_INSTRUCTION rip 0x... info1 ...". The reason
/// name decides the ISA (VMX names are upper case, SVM lower case, and the sets are disjoint).
fn parse_exit(args: &str) -> Option<(u32, u8, u32, u64)> {
    let vcpu = arg(args, "vcpu").and_then(|v| v.parse().ok()).unwrap_or(NO_VCPU);
    let r_at = args.find("reason ")? + "reason ".len();
    let rip_at = args[r_at..].find(" rip ")? + r_at;
    let mut name = args[r_at..rip_at].trim();
    let mut flags = 0;
    if let Some(n) = name.strip_suffix(" FAILED_VMENTRY") {
        name = n;
        flags = reasons::VMX_FAILED_VMENTRY;
    }
    let rip = hex(arg(&args[rip_at..], "rip")?)?;
    if let Some(code) = reasons::code_of(isa::VMX, name) {
        return Some((vcpu, isa::VMX, code | flags, rip));
    }
    let code = reasons::code_of(isa::SVM, name).or_else(|| name.strip_prefix("UNKNOWN(").and_then(|c| hex(c.trim_end_matches(')'))).map(|c| c as u32))?;
    Some((vcpu, isa::SVM, code, rip))
}

pub struct Imported {
    pub profile: Profile,
    pub lines: u64,
    pub events: u64,
    pub skipped: u64,
}

pub fn import(reader: impl BufRead, format: TextFormat) -> Result<Imported> {
    import_with_max_gap(reader, format, None)
}

/// [`import`] with the run-detection gap `max_gap_ns` (None: the default of the trace's
/// source, as `record` uses). Runs are found by the same `profiler_common::runs` code the eBPF
/// programs run, fed with the same finished exits.
pub fn import_with_max_gap(mut reader: impl BufRead, format: TextFormat, max_gap_ns: Option<u64>) -> Result<Imported> {
    let mut text = String::new();
    reader.read_to_string(&mut text).context("reading the trace text (it must be UTF-8 text)")?;
    // A trace with kvm_exit is from the hw source, where kvm_userspace_exit, kvm_emulate_insn and
    // kvm_fpu also fire but do not delimit exits: decide first, then replay with the same event
    // set the live programs attach.
    let saw_hw = text.lines().any(|l| parse_line(l).is_some_and(|e| e.name == "kvm_exit"));
    let mut threads = Threads::default();
    let mut infos: BTreeMap<u32, ThreadInfo> = BTreeMap::new();
    let mut agg = Aggregate::new(true);
    let source = if saw_hw { Source::Hw } else { Source::Emulated };
    agg.max_gap_ns = Some(max_gap_ns.unwrap_or(crate::live::session::default_max_gap_ns(source)));
    let (mut lines, mut events, mut skipped) = (0u64, 0u64, 0u64);
    let (mut first_ts, mut last_ts) = (None, 0u64);
    for line in text.lines() {
        lines += 1;
        let Some(ev) = parse_line(line) else {
            skipped += (!line.trim().is_empty() && !line.starts_with('#')) as u64;
            continue;
        };
        let t = Thread { tgid: ev.tgid.unwrap_or(ev.tid), tid: ev.tid };
        infos.entry(t.tid).or_insert_with(|| ThreadInfo::from_comm(t.tgid, ev.comm.as_bytes()));
        let now = ev.ts_ns;
        first_ts.get_or_insert(now);
        last_ts = now;
        let s = threads.get(t);
        let a = ev.args;
        if saw_hw && matches!(ev.name, "kvm_emulate_insn" | "kvm_userspace_exit" | "kvm_fpu") {
            continue;
        }
        let done = match ev.name {
            "kvm_exit" => match parse_exit(a) {
                Some((vcpu, isa, reason, rip)) => s.on_hw_exit(now, t, vcpu, isa, reason, rip),
                None => {
                    skipped += 1;
                    continue;
                }
            },
            "kvm_entry" if saw_hw => s.on_hw_entry(now),
            "kvm_pio" => {
                let kind = if a.starts_with("pio_write") { detail::PORT_OUT } else { detail::PORT_IN };
                let Some(port) = arg(a, "at").and_then(hex) else {
                    skipped += 1;
                    continue;
                };
                access(s, saw_hw, now, t, kind, port)
            }
            "kvm_mmio" => {
                let kind = if a.starts_with("mmio write") { detail::MMIO_WRITE } else { detail::MMIO_READ };
                let Some(gpa) = arg(a, "gpa").and_then(hex) else {
                    skipped += 1;
                    continue;
                };
                access(s, saw_hw, now, t, kind, gpa)
            }
            "kvm_emulate_insn" => {
                // "0:1000f:ee (prot64)": csbase:rip:bytes; a trailing "failed" repeats an instruction.
                let mut parts = a.split(':');
                match (parts.next().and_then(hex), parts.next().and_then(hex)) {
                    (Some(cs), Some(rip)) if !a.ends_with("failed") => s.on_emulated_insn(now, cs.wrapping_add(rip)),
                    (Some(_), Some(_)) => None,
                    _ => {
                        skipped += 1;
                        continue;
                    }
                }
            }
            "kvm_userspace_exit" => {
                // "reason KVM_EXIT_IO (2)"; a failed KVM_RUN prints "reason restart (4)" for
                // -EINTR and "reason error (N)" for -N, with no reason of its own.
                let code = a.rsplit_once('(').and_then(|(_, c)| c.trim_end_matches(')').parse::<u32>().ok());
                let failed = a.starts_with("reason restart") || a.starts_with("reason error");
                match code {
                    Some(c) if failed => s.on_userspace_exit(now, t, kvm_exit::userspace_exit_reason(0, -(c as i32))),
                    Some(c) => s.on_userspace_exit(now, t, c),
                    None => {
                        skipped += 1;
                        continue;
                    }
                }
            }
            "kvm_fpu" => {
                if a.starts_with("load") {
                    s.on_run_entry(now);
                }
                None
            }
            _ => continue,
        };
        events += 1;
        agg.charge_thread(s, done);
    }
    if events == 0 {
        bail!("no KVM tracepoint events found in {lines} lines: expected {} text with kvm_exit/kvm_entry (or kvm_emulate_insn/kvm_pio) lines", format.name());
    }
    agg.finish_threads(threads.states.values_mut());
    let meta = Meta {
        source: if saw_hw { Source::Hw } else { Source::Emulated },
        origin: format!("import:{}", format.name()),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        start_unix_ns: first_ts.unwrap_or(0),
        end_unix_ns: last_ts,
        records_requested: true,
        ..Meta::default()
    };
    // Every key comes from the importer's own state machine, so each decodes.
    let (profile, _) = agg.into_profile(meta, infos);
    Ok(Imported { profile, lines, events, skipped })
}


fn access(s: &mut profiler_common::ThreadState, hw: bool, now: u64, t: Thread, kind: u8, addr: u64) -> Option<profiler_common::ExitRecord> {
    if hw {
        s.on_hw_detail(kind, addr);
        None
    } else {
        s.on_emulated_access(now, t, kind, addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ftrace_perf_and_tgid_lines() {
        let f = parse_line("     qemu-system-x86-4242  [001] d..2. 1234.567890: kvm_exit: vcpu 0 reason HLT rip 0xfff info1 0x0").unwrap();
        assert_eq!((f.comm, f.tid, f.tgid, f.ts_ns, f.name), ("qemu-system-x86", 4242, None, 1_234_567_890_000, "kvm_exit"));
        let g = parse_line("CPU 0/KVM-4242 (4240) [001] ..... 1.000000001: kvm_entry: vcpu 0, rip 0x1").unwrap();
        assert_eq!((g.comm, g.tid, g.tgid, g.ts_ns), ("CPU 0/KVM", 4242, Some(4240), 1_000_000_001));
        let p = parse_line("qemu-system-x86  4242 [001]  1234.500000: kvm:kvm_pio: pio_write at 0x1f7 size 1 count 1 val 0x30").unwrap();
        assert_eq!((p.comm, p.tid, p.name, p.args), ("qemu-system-x86", 4242, "kvm_pio", "pio_write at 0x1f7 size 1 count 1 val 0x30"));
        let q = parse_line("qemu 4240/4242 [000] 5.25: kvm:kvm_entry: vcpu 1").unwrap();
        assert_eq!((q.tid, q.tgid, q.ts_ns), (4242, Some(4240), 5_250_000_000));
        assert!(parse_line("# tracer: nop").is_none());
    }

    #[test]
    fn exit_reasons_decode_by_isa() {
        assert_eq!(parse_exit("vcpu 3 reason IO_INSTRUCTION rip 0xffffffff81000010 info1 0x0"), Some((3, isa::VMX, 30, 0xffffffff81000010)));
        assert_eq!(parse_exit("vcpu 0 reason io rip 0x10 info1 0x0"), Some((0, isa::SVM, 0x7b, 0x10)));
        assert_eq!(parse_exit("vcpu 0 reason DE excp rip 0x10 info1 0x0"), Some((0, isa::SVM, 0x40, 0x10)));
        assert_eq!(parse_exit("vcpu 0 reason INVALID_STATE FAILED_VMENTRY rip 0x10 info1 0"), Some((0, isa::VMX, 33 | 0x8000_0000, 0x10)));
        assert_eq!(parse_exit("vcpu 0 reason NOT_A_REASON rip 0x10"), None);
    }
}
