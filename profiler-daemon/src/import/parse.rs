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
    /// Reason names seen, decoded once: `(isa, code)`; the first [`FEW_REASONS`] in a list.
    few_reasons: Vec<(Box<[u8]>, Reason)>,
    reasons: HashMap<Box<[u8]>, Reason, foldhash::fast::RandomState>,
    /// The last few threads named (vCPU threads take turns line by line): checked before
    /// `seen`.
    recent: [Option<u32>; RECENT_THREADS],
    /// The text before the timestamp of the last lines that had new ones, and its task.
    tasks: Vec<(Box<[u8]>, Option<line::Task>)>,
}

/// A reason name decoded: `(isa, code)`, or None for a name no table has.
type Reason = Option<(u8, u32)>;

const FEW_REASONS: usize = 8;
const TASKS_KEPT: usize = 8;
const RECENT_THREADS: usize = 4;

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

impl Parser {
    pub fn new(hw: bool, strict: bool) -> Parser {
        Parser { hw, strict, seen: HashSet::default(), few_reasons: Vec::new(), reasons: HashMap::default(), recent: [None; RECENT_THREADS], tasks: Vec::new() }
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

    /// [`line::parse_task`], remembered for the last few texts seen: a thread's lines all
    /// start with the same bytes up to the timestamp.
    fn task(&mut self, head: &[u8]) -> Option<line::Task> {
        if let Some((_, task)) = self.tasks.iter().find(|(h, _)| line::same(h, head)) {
            return task.clone();
        }
        let task = line::parse_task(head);
        if self.tasks.len() == TASKS_KEPT {
            self.tasks.pop();
        }
        self.tasks.insert(0, (head.into(), task.clone()));
        task
    }

    fn reason(&mut self, name: &[u8]) -> Option<(u8, u32)> {
        // A trace has a handful of reasons: the first few are compared in a row (cheaper than
        // hashing the name), the rest found by hash.
        if let Some((_, r)) = self.few_reasons.iter().find(|(n, _)| line::same(n, name)) {
            return *r;
        }
        if let Some(r) = self.reasons.get(name) {
            return *r;
        }
        let decoded = decode_reason(name);
        if self.few_reasons.len() < FEW_REASONS {
            self.few_reasons.push((name.into(), decoded));
        } else {
            self.reasons.insert(name.into(), decoded);
        }
        decoded
    }

    fn line(&mut self, text: &[u8], last_tid: &mut Option<u32>, new_threads: &mut Vec<(u32, ThreadInfo)>) -> Line {
        let Some(tail) = line::parse_tail(text) else { return Line::Malformed };
        let Some(task) = self.task(&text[..tail.task_end]) else { return Line::Malformed };
        let ev = tail.event(text, task);
        let t = Thread { tgid: ev.tgid.unwrap_or(ev.tid), tid: ev.tid };
        if *last_tid != Some(t.tid) {
            *last_tid = Some(t.tid);
            if !self.recent.contains(&Some(t.tid)) {
                self.recent.rotate_right(1);
                self.recent[0] = Some(t.tid);
                if self.seen.insert(t.tid) {
                    new_threads.push((t.tid, ThreadInfo::from_comm(t.tgid, ev.comm)));
                }
            }
        }
        let now = ev.ts_ns;
        let hw = self.hw;
        let a = ev.args;
        let name = EventName::of(ev.name);
        if hw && matches!(name, EventName::EmulateInsn | EventName::UserspaceExit | EventName::Fpu) {
            return Line::Ignored(now);
        }
        let parsed = match name {
            EventName::Exit if self.strict => return Line::LateHw,
            EventName::Exit => {
                let Some((vcpu, isa, reason, rip)) = parse_exit(a, |n| self.reason(n)) else { return Line::Malformed };
                Ev::Exit { vcpu, isa, reason, rip }
            }
            EventName::Entry if hw => Ev::Entry,
            EventName::Pio => {
                let kind = if a.starts_with(b"pio_write") { detail::PORT_OUT } else { detail::PORT_IN };
                let Some(port) = pio_port(a).and_then(line::hex) else { return Line::Malformed };
                Ev::Access { kind, addr: port }
            }
            EventName::Mmio => {
                let kind = if a.starts_with(b"mmio write") { detail::MMIO_WRITE } else { detail::MMIO_READ };
                let Some(gpa) = line::arg(a, b"gpa").and_then(line::hex) else { return Line::Malformed };
                Ev::Access { kind, addr: gpa }
            }
            EventName::EmulateInsn => {
                // "0:1000f:ee (prot64)": csbase:rip:bytes; a trailing "failed" repeats an instruction.
                let mut parts = a.split(|c| *c == b':');
                match (parts.next().and_then(line::hex), parts.next().and_then(line::hex)) {
                    (Some(cs), Some(rip)) if !a.ends_with(b"failed") => Ev::Insn { addr: cs.wrapping_add(rip) },
                    (Some(_), Some(_)) => Ev::Nothing,
                    _ => return Line::Malformed,
                }
            }
            EventName::UserspaceExit => {
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
            EventName::Fpu if a.starts_with(b"load") => Ev::RunEntry,
            EventName::Fpu => Ev::Nothing,
            _ => return Line::Ignored(now),
        };
        Line::Event(Parsed { t, ts: now, ev: parsed })
    }
}


/// The events the importer knows, by name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum EventName {
    Exit,
    Entry,
    Pio,
    Mmio,
    EmulateInsn,
    UserspaceExit,
    Fpu,
    Other,
}

impl EventName {
    /// By length first, then as fixed-size arrays (compared as words, not by `memcmp`).
    fn of(name: &[u8]) -> EventName {
        fn is<const N: usize>(name: &[u8], want: &[u8; N]) -> bool {
            <&[u8; N]>::try_from(name).is_ok_and(|n| n == want)
        }
        match name.len() {
            7 if is(name, b"kvm_pio") => EventName::Pio,
            7 if is(name, b"kvm_fpu") => EventName::Fpu,
            8 if is(name, b"kvm_exit") => EventName::Exit,
            8 if is(name, b"kvm_mmio") => EventName::Mmio,
            9 if is(name, b"kvm_entry") => EventName::Entry,
            16 if is(name, b"kvm_emulate_insn") => EventName::EmulateInsn,
            18 if is(name, b"kvm_userspace_exit") => EventName::UserspaceExit,
            _ => EventName::Other,
        }
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

/// `kvm_pio`'s port, `line::arg(a, b"at")`: right after "pio_write at " or "pio_read at ",
/// as every kernel prints it (the word before "at" is then not "at"), else by the word search.
fn pio_port(a: &[u8]) -> Option<&[u8]> {
    match a.strip_prefix(b"pio_write at ").or_else(|| a.strip_prefix(b"pio_read at ")) {
        Some(rest) => line::first_word(rest),
        None => line::arg(a, b"at"),
    }
}

/// `kvm_exit` arguments: "vcpu 0 reason IO_INSTRUCTION rip 0x... info1 ...".
fn parse_exit(args: &[u8], mut reason: impl FnMut(&[u8]) -> Option<(u8, u32)>) -> Option<(u32, u8, u32, u64)> {
    // "vcpu N " leads on every kernel; anything else takes the general word search.
    let lead = args.strip_prefix(b"vcpu ").and_then(|r| r.iter().position(|c| *c == b' ').map(|i| &r[..i]));
    let vcpu = lead.or_else(|| line::arg(args, b"vcpu")).and_then(line::dec_u32).unwrap_or(NO_VCPU);
    // The first "reason ": right after an all-digit vcpu word when the line is regular (no
    // "reason " can start inside "vcpu N "), else found by search.
    let regular = lead.filter(|w| !w.is_empty() && w.iter().all(u8::is_ascii_digit)).map(|w| b"vcpu ".len() + w.len() + 1);
    let r_at = match regular {
        Some(at) if args[at..].starts_with(b"reason ") => at,
        _ => REASON.find(args)?,
    } + b"reason ".len();
    // The first " rip " after it: it starts at one of the spaces, tried in order.
    let mut rip_at = r_at;
    loop {
        rip_at += line::find(&args[rip_at..], b' ')?;
        if args[rip_at..].starts_with(b" rip ") {
            break;
        }
        rip_at += 1;
    }
    let name = line::trim(&args[r_at..rip_at]);
    // The word after "rip" (`line::arg` on " rip VALUE ...").
    let rip = line::hex(line::first_word(&args[rip_at + b" rip ".len()..])?)?;
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

    /// `parse_exit` before the search for "reason " and " rip " took the regular layout's
    /// shortcut.
    fn reference_exit(args: &[u8]) -> Option<(u32, u8, u32, u64)> {
        let lead = args.strip_prefix(b"vcpu ").and_then(|r| r.iter().position(|c| *c == b' ').map(|i| &r[..i]));
        let vcpu = lead.or_else(|| line::arg(args, b"vcpu")).and_then(line::dec_u32).unwrap_or(NO_VCPU);
        let r_at = REASON.find(args)? + b"reason ".len();
        let rip_at = memchr::memmem::find(&args[r_at..], b" rip ")? + r_at;
        let name = line::trim(&args[r_at..rip_at]);
        let rip = line::hex(line::arg(&args[rip_at..], b"rip")?)?;
        let (isa, code) = decode_reason(name)?;
        Some((vcpu, isa, code, rip))
    }

    #[test]
    fn exit_arguments_agree_with_the_reference_on_mutated_lines() {
        let seeds: [&[u8]; 4] = [
            b"vcpu 3 reason IO_INSTRUCTION rip 0xffffffff81000010 info1 0x0 info2 0x0",
            b"vcpu 0 reason INVALID_STATE FAILED_VMENTRY rip 0x10 info1 0",
            b"vcpu 0 reason DE excp rip 0x10 info1 0x0",
            b"reason HLT vcpu 1 rip 0x5",
        ];
        let alphabet = b" ,0123456789reasonrip vcpu0x";
        let mut rng = crate::import::XorShift(0x2545_f491_4f6c_dd1du64);
        let mut decoded = 0;
        for seed in seeds {
            for round in 0..20_000 {
                let l = rng.mutated(seed, alphabet, round % 4);
                let want = reference_exit(&l);
                assert_eq!(parse_exit(&l, decode_reason), want, "{}", String::from_utf8_lossy(&l));
                decoded += usize::from(want.is_some());
            }
        }
        assert!(decoded > 10_000, "{decoded}");
    }

    #[test]
    fn pio_ports_agree_with_the_word_search_on_mutated_lines() {
        let seeds: [&[u8]; 3] = [b"pio_write at 0x1f0 size 1 count 1 val 0x0", b"pio_read at 0x71 size 1 count 1 val 0x10", b"pio_write at,0x80"];
        let alphabet = b" ,0x1fatpio_readwrite";
        let mut xs = crate::import::XorShift(0x0bad_5eed_1234_5678u64);
        for seed in seeds {
            for round in 0..20_000 {
                let l = xs.mutated(seed, alphabet, round % 4);
                assert_eq!(pio_port(&l), line::arg(&l, b"at"), "{}", String::from_utf8_lossy(&l));
            }
        }
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
