//! Trace lines to events: the parsing stage of the import, run on several threads at once,
//! one block of whole lines at a time (see `pipeline`).
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use memchr::memmem::Finder;
use profiler_common::{detail, isa, kvm_exit, Thread, NO_VCPU};

use super::line;
use crate::model::{reasons, ThreadInfo};

/// One understood event, owned: what the parser hands the state machine.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ev {
    Exit { vcpu: u32, isa: u8, reason: u32, rip: u64 },
    Entry,
    Access { kind: u8, addr: u64 },
    Insn { addr: u64 },
    UserspaceExit { reason: u32 },
    RunEntry,
    /// Understood, changes no state (a failed instruction, an FPU unload).
    Nothing,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Parsed {
    pub t: Thread,
    pub ts: u64,
    pub ev: Ev,
}

/// What one block of whole lines held, with line numbers counted from the block's start: the
/// replay adds the lines of the blocks before it.
#[derive(Debug, Default)]
pub(super) struct ParsedBlock {
    pub lines: u64,
    pub events: Vec<Parsed>,
    pub skipped: u64,
    /// The first [`super::SKIPPED_LINES_KEPT`] malformed lines, 1-based within the block.
    pub skipped_lines: Vec<u64>,
    /// Timestamps of the first and last KVM event lines (replayed or not).
    pub first_ts: Option<u64>,
    pub last_ts: u64,
    /// Threads this parser had not seen before, in order of appearance.
    pub new_threads: Vec<(u32, ThreadInfo)>,
    /// A `kvm_exit` line after the lookahead chose the emulated source (1-based in the block).
    pub late_hw: Option<u64>,
}

/// One parsing thread's state: the source decided before parsing, and caches.
#[derive(Clone)]
pub(super) struct Parser {
    pub hw: bool,
    /// Decided "emulated" without seeing the whole input: a `kvm_exit` later is an error.
    pub strict: bool,
    /// Threads already named in an earlier block of this parser. A parser takes blocks in
    /// file order, so a thread first seen here in an earlier block is named there.
    seen: HashSet<u32, foldhash::fast::RandomState>,
    /// Reason names seen, decoded once: `(isa, code)`.
    reasons: HashMap<Box<[u8]>, Option<(u8, u32)>, foldhash::fast::RandomState>,
}

/// What one line was.
enum Line {
    /// An event to replay.
    Event(Parsed),
    /// A KVM event this source does not replay, at this time.
    Ignored(u64),
    /// Not understood (counted and named by line number, unless blank or a comment).
    Malformed,
    /// A `kvm_exit` after the lookahead chose the emulated source.
    LateHw,
}

static REASON: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"reason "));
static RIP: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b" rip "));

impl Parser {
    pub fn new(hw: bool, strict: bool) -> Parser {
        Parser { hw, strict, seen: HashSet::default(), reasons: HashMap::default() }
    }

    /// Parses a block of whole lines (each ended by a newline, the last one perhaps not).
    pub fn block(&mut self, text: &[u8]) -> ParsedBlock {
        let mut out = ParsedBlock { events: Vec::with_capacity(text.len() / 64), ..ParsedBlock::default() };
        let mut last_tid = None;
        let mut start = 0;
        let ends = memchr::memchr_iter(b'\n', text).chain((text.last() != Some(&b'\n') && !text.is_empty()).then_some(text.len()));
        for end in ends {
            let raw = &text[start..end];
            start = end + 1;
            out.lines += 1;
            // Parsed untrimmed (the parser finds its fields wherever they are); only a line
            // that does not parse is trimmed, to tell blank lines and comments.
            match self.line(raw, &mut last_tid, &mut out.new_threads) {
                Line::Event(p) => {
                    out.first_ts.get_or_insert(p.ts);
                    out.last_ts = p.ts;
                    out.events.push(p);
                }
                Line::Ignored(ts) => {
                    out.first_ts.get_or_insert(ts);
                    out.last_ts = ts;
                }
                Line::Malformed if line::trim(raw).is_empty() || line::trim(raw).starts_with(b"#") => {}
                Line::Malformed => {
                    out.skipped += 1;
                    if out.skipped_lines.len() < super::SKIPPED_LINES_KEPT {
                        out.skipped_lines.push(out.lines);
                    }
                }
                Line::LateHw => {
                    // Nothing after it is replayed: the import stops there.
                    out.late_hw = Some(out.lines);
                    break;
                }
            }
        }
        out
    }

    fn reason(&mut self, name: &[u8]) -> Option<(u8, u32)> {
        if let Some(r) = self.reasons.get(name) {
            return *r;
        }
        let decoded = decode_reason(name);
        self.reasons.insert(name.into(), decoded);
        decoded
    }

    fn line(&mut self, text: &[u8], last_tid: &mut Option<u32>, new_threads: &mut Vec<(u32, ThreadInfo)>) -> Line {
        let Some(ev) = line::parse(text) else { return Line::Malformed };
        let t = Thread { tgid: ev.tgid.unwrap_or(ev.tid), tid: ev.tid };
        if *last_tid != Some(t.tid) {
            *last_tid = Some(t.tid);
            if self.seen.insert(t.tid) {
                new_threads.push((t.tid, ThreadInfo::from_comm(t.tgid, ev.comm)));
            }
        }
        let now = ev.ts_ns;
        let hw = self.hw;
        let a = ev.args;
        if hw && matches!(ev.name, b"kvm_emulate_insn" | b"kvm_userspace_exit" | b"kvm_fpu") {
            return Line::Ignored(now);
        }
        let parsed = match ev.name {
            b"kvm_exit" if self.strict => return Line::LateHw,
            b"kvm_exit" => {
                let Some((vcpu, isa, reason, rip)) = parse_exit(a, |n| self.reason(n)) else { return Line::Malformed };
                Ev::Exit { vcpu, isa, reason, rip }
            }
            b"kvm_entry" if hw => Ev::Entry,
            b"kvm_pio" => {
                let kind = if a.starts_with(b"pio_write") { detail::PORT_OUT } else { detail::PORT_IN };
                let Some(port) = line::arg(a, b"at").and_then(line::hex) else { return Line::Malformed };
                Ev::Access { kind, addr: port }
            }
            b"kvm_mmio" => {
                let kind = if a.starts_with(b"mmio write") { detail::MMIO_WRITE } else { detail::MMIO_READ };
                let Some(gpa) = line::arg(a, b"gpa").and_then(line::hex) else { return Line::Malformed };
                Ev::Access { kind, addr: gpa }
            }
            b"kvm_emulate_insn" => {
                // "0:1000f:ee (prot64)": csbase:rip:bytes; a trailing "failed" repeats an instruction.
                let mut parts = a.split(|c| *c == b':');
                match (parts.next().and_then(line::hex), parts.next().and_then(line::hex)) {
                    (Some(cs), Some(rip)) if !a.ends_with(b"failed") => Ev::Insn { addr: cs.wrapping_add(rip) },
                    (Some(_), Some(_)) => Ev::Nothing,
                    _ => return Line::Malformed,
                }
            }
            b"kvm_userspace_exit" => {
                // "reason KVM_EXIT_IO (2)"; a failed KVM_RUN prints "reason restart (4)" for
                // -EINTR and "reason error (N)" for -N, with no reason of its own.
                let code = memchr::memrchr(b'(', a).and_then(|i| line::dec_u32(a[i + 1..].strip_suffix(b")").unwrap_or(&a[i + 1..])));
                let failed = a.starts_with(b"reason restart") || a.starts_with(b"reason error");
                match code {
                    Some(c) if failed => Ev::UserspaceExit { reason: kvm_exit::userspace_exit_reason(0, -(c as i32)) },
                    Some(c) => Ev::UserspaceExit { reason: c },
                    None => return Line::Malformed,
                }
            }
            b"kvm_fpu" if a.starts_with(b"load") => Ev::RunEntry,
            b"kvm_fpu" => Ev::Nothing,
            _ => return Line::Ignored(now),
        };
        Line::Event(Parsed { t, ts: now, ev: parsed })
    }
}


/// A reason name as `kvm_exit` prints it: VMX names are upper case, SVM lower case, and the
/// sets are disjoint, so the name decides the ISA.
fn decode_reason(name: &[u8]) -> Option<(u8, u32)> {
    let name = std::str::from_utf8(name).ok()?;
    let (name, flags) = match name.strip_suffix(" FAILED_VMENTRY") {
        Some(n) => (n, reasons::VMX_FAILED_VMENTRY),
        None => (name, 0),
    };
    if let Some(code) = reasons::code_of(isa::VMX, name) {
        return Some((isa::VMX, code | flags));
    }
    let code = reasons::code_of(isa::SVM, name)
        .or_else(|| name.strip_prefix("UNKNOWN(").and_then(|c| profiler_common::parse_hex(c.trim_end_matches(')'))).map(|c| c as u32))?;
    Some((isa::SVM, code))
}

/// `kvm_exit` arguments: "vcpu 0 reason IO_INSTRUCTION rip 0x... info1 ...".
fn parse_exit(args: &[u8], mut reason: impl FnMut(&[u8]) -> Option<(u8, u32)>) -> Option<(u32, u8, u32, u64)> {
    // "vcpu N " leads on every kernel; anything else takes the general word search.
    let lead = args.strip_prefix(b"vcpu ").and_then(|r| r.iter().position(|c| *c == b' ').map(|i| &r[..i]));
    let vcpu = lead.or_else(|| line::arg(args, b"vcpu")).and_then(line::dec_u32).unwrap_or(NO_VCPU);
    let r_at = REASON.find(args)? + b"reason ".len();
    let rip_at = RIP.find(&args[r_at..])? + r_at;
    let name = line::trim(&args[r_at..rip_at]);
    let rip = line::hex(line::arg(&args[rip_at..], b"rip")?)?;
    let (isa, code) = reason(name)?;
    Some((vcpu, isa, code, rip))
}


#[cfg(test)]
mod tests {
    use super::*;

    fn exit(args: &str) -> Option<(u32, u8, u32, u64)> {
        parse_exit(args.as_bytes(), decode_reason)
    }

    #[test]
    fn exit_reasons_decode_by_isa() {
        assert_eq!(exit("vcpu 3 reason IO_INSTRUCTION rip 0xffffffff81000010 info1 0x0"), Some((3, isa::VMX, 30, 0xffffffff81000010)));
        assert_eq!(exit("vcpu 0 reason io rip 0x10 info1 0x0"), Some((0, isa::SVM, 0x7b, 0x10)));
        assert_eq!(exit("vcpu 0 reason DE excp rip 0x10 info1 0x0"), Some((0, isa::SVM, 0x40, 0x10)));
        assert_eq!(exit("vcpu 0 reason INVALID_STATE FAILED_VMENTRY rip 0x10 info1 0"), Some((0, isa::VMX, 33 | 0x8000_0000, 0x10)));
        assert_eq!(exit("vcpu 0 reason NOT_A_REASON rip 0x10"), None);
    }

    #[test]
    fn a_block_counts_lines_names_threads_once_and_numbers_malformed_lines() {
        let text = b"# tracer: nop\n\
            CPU 0/KVM-10 (9) [000] d..2. 1.000001: kvm_exit: vcpu 0 reason HLT rip 0x1 info1 0x0\n\
            garbage\n\
            CPU 0/KVM-10 (9) [000] d..2. 1.000003: kvm_entry: vcpu 0, rip 0x2\n\
            CPU 0/KVM-10 (9) [000] d..2. 1.000004: kvm_set_irq: gsi 4 level 1 source 0\n\
            CPU 0/KVM-10 (9) [000] d..2. 1.000005: kvm_exit: vcpu 0 reason NOPE rip 0x1 info1 0x0";
        let mut p = Parser::new(true, false);
        let b = p.block(text);
        assert_eq!((b.lines, b.events.len(), b.skipped, b.skipped_lines.clone()), (6, 2, 2, vec![3, 6]));
        assert_eq!((b.first_ts, b.last_ts), (Some(1_000_001_000), 1_000_004_000));
        assert_eq!(b.new_threads.len(), 1);
        // The same thread in this parser's next block is not named again.
        assert!(p.block(b"CPU 0/KVM-10 (9) [000] d..2. 2.0: kvm_entry: vcpu 0, rip 0x2\n").new_threads.is_empty());
        let mut strict = Parser::new(false, true);
        let s = strict.block(b"x-1 [000] 1.0: kvm_pio: pio_write at 0x80 size 1 count 1 val 0x0\nx-1 [000] 2.0: kvm_exit: vcpu 0 reason HLT rip 0x1 info1 0x0\nmore\n");
        assert_eq!((s.late_hw, s.events.len()), (Some(2), 1));
    }
}
