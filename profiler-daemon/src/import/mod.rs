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
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Read};
use std::sync::LazyLock;

use anyhow::{bail, Context, Result};
use memchr::memmem::Finder;
use profiler_common::{detail, isa, kvm_exit, ExitKey, ExitRecord, ExitStats, Thread, NO_VCPU};

use crate::model::aggregate::{Aggregate, Threads};
use crate::model::record_stream::StreamWriter;
use crate::model::{reasons, Meta, Profile, Source, ThreadInfo};

pub mod line;

pub use line::Event;

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

/// Splits a trace line into task, timestamp, event name and arguments ([`line::parse`]).
pub fn parse_line(line: &str) -> Option<Event<'_>> {
    line::parse(line.as_bytes())
}

/// How many malformed lines are named by number ([`Imported::skipped_lines`]).
pub const SKIPPED_LINES_KEPT: usize = 10;
/// Standard input is not seekable: the importer looks this far ahead for `kvm_exit` to choose
/// the source before it replays anything.
pub const LOOKAHEAD_BYTES: usize = 64 << 20;

pub struct Imported {
    pub profile: Profile,
    pub lines: u64,
    pub events: u64,
    /// Lines that are neither comments, blank, nor understood events.
    pub skipped: u64,
    /// The first [`SKIPPED_LINES_KEPT`] of them, by line number (1-based).
    pub skipped_lines: Vec<u64>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// Run detection (`kvmprof advise`): None = the default of the trace's source, as
    /// `record` uses.
    pub max_gap_ns: Option<u64>,
    /// Whether the trace has `kvm_exit` (the hw source), when the caller already knows it
    /// ([`trace_is_hw`] on a file). None: found by looking ahead [`LOOKAHEAD_BYTES`].
    pub hw: Option<bool>,
}

/// Whether `line` is a `kvm_exit` event (the hw source).
fn is_kvm_exit_line(line: &[u8]) -> bool {
    line::parse(line).is_some_and(|e| e.name == b"kvm_exit")
}

static KVM_EXIT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"kvm_exit:"));
static REASON: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"reason "));
static RIP: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b" rip "));

/// Scans a trace for a `kvm_exit` line, stopping at the first (so an hw trace is decided at
/// once; an emulated one is read to its end at memory speed).
pub fn trace_is_hw(mut input: impl Read) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 1 << 20];
    let mut have = 0;
    loop {
        let n = input.read(&mut buf[have..])?;
        let end = have + n;
        // Whole lines only: the tail after the last newline waits for the next read.
        let whole = if n == 0 { end } else { memchr::memrchr(b'\n', &buf[..end]).map_or(0, |i| i + 1) };
        let mut from = 0;
        while let Some(hit) = KVM_EXIT.find(&buf[from..whole]) {
            let at = from + hit;
            let ls = memchr::memrchr(b'\n', &buf[..at]).map_or(0, |i| i + 1);
            let le = memchr::memchr(b'\n', &buf[at..whole]).map_or(whole, |i| at + i);
            if is_kvm_exit_line(&buf[ls..le]) {
                return Ok(true);
            }
            from = le.min(whole);
            if from == whole {
                break;
            }
        }
        if n == 0 {
            return Ok(false);
        }
        buf.copy_within(whole..end, 0);
        have = end - whole;
        if have == buf.len() {
            // A line longer than the buffer: not a trace line; drop it.
            have = 0;
        }
    }
}

/// Reads the start of `input` (up to [`LOOKAHEAD_BYTES`]) until a `kvm_exit` line shows the
/// source; returns whether one did, the bytes read, and whether the whole input was read.
fn look_ahead(input: &mut impl BufRead) -> Result<(bool, Vec<u8>, bool)> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        let n = input.read_until(b'\n', &mut head).context("reading the trace text")?;
        if n == 0 {
            return Ok((false, head, true));
        }
        if is_kvm_exit_line(&head[start..]) {
            return Ok((true, head, false));
        }
        if head.len() >= LOOKAHEAD_BYTES {
            return Ok((false, head, false));
        }
    }
}

pub fn import(reader: impl BufRead, format: TextFormat) -> Result<Imported> {
    import_with(reader, format, ImportOptions::default(), None)
}

/// [`import`] with the run-detection gap `max_gap_ns` (None: the default of the trace's
/// source, as `record` uses). Runs are found by the same `profiler_common::runs` code the eBPF
/// programs run, fed with the same finished exits.
pub fn import_with_max_gap(reader: impl BufRead, format: TextFormat, max_gap_ns: Option<u64>) -> Result<Imported> {
    import_with(reader, format, ImportOptions { max_gap_ns, hw: None }, None)
}

/// Replays a trace line by line, in bounded memory (one line, one state per thread, one
/// aggregate entry per exit site); every finished exit goes to `records`, in trace order.
pub fn import_with(mut reader: impl BufRead, format: TextFormat, opts: ImportOptions, records: Option<&mut StreamWriter>) -> Result<Imported> {
    // A trace with kvm_exit is from the hw source, where kvm_userspace_exit, kvm_emulate_insn and
    // kvm_fpu also fire but do not delimit exits: decide first, then replay with the same event
    // set the live programs attach.
    match opts.hw {
        Some(hw) => Replay::new(hw, false, opts.max_gap_ns, records).run(reader, format),
        None => {
            let (hw, head, complete) = look_ahead(&mut reader)?;
            let strict = !hw && !complete;
            let replay = Replay::new(hw, strict, opts.max_gap_ns, records);
            replay.run(std::io::Cursor::new(head).chain(reader), format)
        }
    }
}

/// One understood event, owned: what the parser hands the state machine.
#[derive(Debug, Clone, Copy)]
enum Ev {
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
struct Parsed {
    t: Thread,
    ts: u64,
    ev: Ev,
}

/// Events handed from the parser to the state machine at a time.
const BATCH: usize = 4096;

/// The reading side (this thread): lines to events, counts, thread names.
struct Parser {
    hw: bool,
    /// Decided "emulated" without seeing the whole input: a `kvm_exit` later is an error.
    strict: bool,
    infos: BTreeMap<u32, ThreadInfo>,
    /// Reason names seen, decoded once: `(isa, code)`.
    reasons: HashMap<Box<[u8]>, Option<(u8, u32)>, foldhash::fast::RandomState>,
}

/// The replaying side (a second thread): the per-thread state machines, the aggregate and
/// the record stream. Reading and parsing take about as long as replaying, so the two run
/// side by side.
struct Machine<'s> {
    hw: bool,
    threads: Threads,
    agg: Aggregate,
    /// Exit sites numbered in order of appearance (the record stream's site numbers), and
    /// their exits charged while reading (merged into `agg` at the end): one lookup per exit
    /// in a hash map with a fast hasher, not two in ordered maps.
    sites: HashMap<ExitKey, u32, foldhash::fast::RandomState>,
    stats: Vec<ExitStats>,
    records: Option<&'s mut StreamWriter>,
}

struct Replay<'s> {
    parser: Parser,
    machine: Machine<'s>,
}

impl<'s> Replay<'s> {
    fn new(hw: bool, strict: bool, max_gap_ns: Option<u64>, records: Option<&'s mut StreamWriter>) -> Replay<'s> {
        let mut agg = Aggregate::new(false);
        let source = if hw { Source::Hw } else { Source::Emulated };
        agg.max_gap_ns = Some(max_gap_ns.unwrap_or(crate::live::session::default_max_gap_ns(source)));
        Replay {
            parser: Parser { hw, strict, infos: BTreeMap::new(), reasons: HashMap::default() },
            machine: Machine { hw, threads: Threads::default(), agg, sites: HashMap::default(), stats: Vec::new(), records },
        }
    }

    fn run(self, reader: impl BufRead, format: TextFormat) -> Result<Imported> {
        let Replay { mut parser, machine } = self;
        let (mut lines, mut events, mut skipped) = (0u64, 0u64, 0u64);
        let mut skipped_lines = Vec::new();
        let (mut first_ts, mut last_ts) = (None, 0u64);
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<Parsed>>(8);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<Parsed>>();
        let (read, machine) = std::thread::scope(|scope| {
            let worker = scope.spawn(move || {
                let mut m = machine;
                for batch in full_rx {
                    batch.iter().for_each(|p| m.apply(p));
                    let mut batch = batch;
                    batch.clear();
                    let _ = empty_tx.send(batch);
                }
                m
            });
            let mut batch = Vec::with_capacity(BATCH);
            let read = each_line(reader, |raw| {
                lines += 1;
                let text = line::trim(raw);
                match parser.line(text) {
                    Line::Event(p) => {
                        events += 1;
                        first_ts.get_or_insert(p.ts);
                        last_ts = p.ts;
                        batch.push(p);
                        if batch.len() == BATCH {
                            let next = empty_rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(BATCH));
                            // The worker only stops early by panicking, which join reports.
                            let _ = full_tx.send(std::mem::replace(&mut batch, next));
                        }
                    }
                    Line::Ignored(ts) => {
                        first_ts.get_or_insert(ts);
                        last_ts = ts;
                    }
                    Line::Malformed if text.is_empty() || text.starts_with(b"#") => {}
                    Line::Malformed => {
                        skipped += 1;
                        if skipped_lines.len() < SKIPPED_LINES_KEPT {
                            skipped_lines.push(lines);
                        }
                    }
                    Line::LateHw => bail!(
                        "kvm_exit first appears at line {lines}, past the first {} MiB of standard input that chose the emulated source: import the file by its path instead of -",
                        LOOKAHEAD_BYTES >> 20
                    ),
                }
                Ok(())
            });
            let _ = full_tx.send(batch);
            drop(full_tx);
            (read, worker.join().map_err(|_| anyhow::anyhow!("the import's replay thread failed")))
        });
        read?;
        let machine = machine?;
        if events == 0 {
            bail!("no KVM tracepoint events found in {lines} lines: expected {} text with kvm_exit/kvm_entry (or kvm_emulate_insn/kvm_pio) lines", format.name());
        }
        let mut machine = machine;
        let agg = machine.finish();
        let meta = Meta {
            source: if parser.hw { Source::Hw } else { Source::Emulated },
            origin: format!("import:{}", format.name()),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            start_unix_ns: first_ts.unwrap_or(0),
            end_unix_ns: last_ts,
            records_requested: machine.records.is_some(),
            ..Meta::default()
        };
        // Every key comes from the importer's own state machine, so each decodes.
        let (profile, _) = agg.into_profile(meta, parser.infos);
        Ok(Imported { profile, lines, events, skipped, skipped_lines })
    }
}

impl Machine<'_> {
    /// The exit's site number, numbering a new site.
    fn site(&mut self, key: &ExitKey) -> u32 {
        let next = self.stats.len() as u32;
        let site = *self.sites.entry(*key).or_insert(next);
        if site == next {
            self.stats.push(ExitStats::default());
        }
        site
    }

    /// Replays one event through its thread's state machine, exactly as the eBPF programs
    /// would; a finished exit is charged and streamed.
    fn apply(&mut self, p: &Parsed) {
        let (t, now) = (p.t, p.ts);
        let s = self.threads.get(t);
        let done = match p.ev {
            Ev::Exit { vcpu, isa, reason, rip } => s.on_hw_exit(now, t, vcpu, isa, reason, rip),
            Ev::Entry => s.on_hw_entry(now),
            Ev::Access { kind, addr } => access(s, self.hw, now, t, kind, addr),
            Ev::Insn { addr } => s.on_emulated_insn(now, addr),
            Ev::UserspaceExit { reason } => s.on_userspace_exit(now, t, reason),
            Ev::RunEntry => {
                s.on_run_entry(now);
                None
            }
            Ev::Nothing => None,
        };
        if let Some(rec) = done {
            let site = self.site(&rec.key);
            self.stats[site as usize].add(rec.duration_ns);
            if let Some(w) = &mut self.records {
                w.push_site(site, &rec);
            }
            self.agg.detect_runs(self.threads.get(t), &rec);
        }
    }

    /// The aggregate of every exit, with the exits still open at the end charged as `record`
    /// charges them (and streamed after the others).
    fn finish(&mut self) -> Aggregate {
        let mut agg = std::mem::take(&mut self.agg);
        for (key, site) in &self.sites {
            agg.merge(*key, &self.stats[*site as usize]);
        }
        let mut open = Aggregate::new(true);
        open.max_gap_ns = agg.max_gap_ns;
        open.finish_threads(self.threads.states.values_mut());
        for rec in open.records.take().unwrap_or_default() {
            let site = self.site(&rec.key);
            if let Some(w) = &mut self.records {
                w.push_site(site, &rec);
            }
        }
        for (key, stats) in &open.exits {
            agg.merge(*key, stats);
        }
        for (key, run) in &open.runs {
            agg.merge_run(*key, run);
        }
        agg.unfinished = open.unfinished;
        agg
    }
}

impl Parser {
    fn reason(&mut self, name: &[u8]) -> Option<(u8, u32)> {
        if let Some(r) = self.reasons.get(name) {
            return *r;
        }
        let decoded = decode_reason(name);
        self.reasons.insert(name.into(), decoded);
        decoded
    }

    fn line(&mut self, text: &[u8]) -> Line {
        let Some(ev) = line::parse(text) else { return Line::Malformed };
        let t = Thread { tgid: ev.tgid.unwrap_or(ev.tid), tid: ev.tid };
        self.infos.entry(t.tid).or_insert_with(|| ThreadInfo::from_comm(t.tgid, ev.comm));
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

/// Calls `f` with every line of `reader` (without its newline), in place in the reader's
/// buffer: only a line that straddles two reads is copied.
fn each_line(mut reader: impl BufRead, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let buf = reader.fill_buf().context("reading the trace text")?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        let mut start = 0;
        if !carry.is_empty() {
            match memchr::memchr(b'\n', buf) {
                Some(i) => {
                    carry.extend_from_slice(&buf[..i]);
                    f(&carry)?;
                    carry.clear();
                    start = i + 1;
                }
                None => {
                    carry.extend_from_slice(buf);
                    reader.consume(n);
                    continue;
                }
            }
        }
        let base = start;
        for nl in memchr::memchr_iter(b'\n', &buf[base..]) {
            let end = base + nl;
            f(&buf[start..end])?;
            start = end + 1;
        }
        carry.extend_from_slice(&buf[start..]);
        reader.consume(n);
    }
    if !carry.is_empty() {
        f(&carry)?;
    }
    Ok(())
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
    let vcpu = line::arg(args, b"vcpu").and_then(line::dec_u32).unwrap_or(NO_VCPU);
    let r_at = REASON.find(args)? + b"reason ".len();
    let rip_at = RIP.find(&args[r_at..])? + r_at;
    let name = line::trim(&args[r_at..rip_at]);
    let rip = line::hex(line::arg(&args[rip_at..], b"rip")?)?;
    let (isa, code) = reason(name)?;
    Some((vcpu, isa, code, rip))
}

fn access(s: &mut profiler_common::ThreadState, hw: bool, now: u64, t: Thread, kind: u8, addr: u64) -> Option<ExitRecord> {
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
    fn finds_kvm_exit_past_a_buffer_boundary() {
        let mut t = "x-1 [000] 1.0: kvm_pio: pio_write at 0x80 size 1 count 1 val 0x0\n".repeat(30_000);
        assert!(!trace_is_hw(t.as_bytes()).unwrap());
        t.push_str("q-1 [000] 2.0: kvm_exit: vcpu 0 reason HLT rip 0x1 info1 0x0\n");
        assert!(trace_is_hw(t.as_bytes()).unwrap());
        assert!(!trace_is_hw(&b"kvm_exit: in a comment, not an event\n"[..]).unwrap());
    }
}
