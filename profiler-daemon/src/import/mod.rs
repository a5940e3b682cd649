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
use std::io::{BufRead, Read};
use std::sync::LazyLock;

use anyhow::{bail, Context, Result};
use memchr::memmem::Finder;

use crate::model::aggregate::Aggregate;
use crate::model::record_stream::StreamWriter;
use crate::model::{Meta, Profile, Source};

pub mod line;
mod parse;
mod pipeline;
mod replay;
mod sites;

pub use line::Event;
use parse::Parser;
use pipeline::Input;
use replay::Machine;

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

pub fn import(reader: impl BufRead + Send, format: TextFormat) -> Result<Imported> {
    import_with(reader, format, ImportOptions::default(), None)
}

/// [`import`] with the run-detection gap `max_gap_ns` (None: the default of the trace's
/// source, as `record` uses). Runs are found by the same `profiler_common::runs` code the eBPF
/// programs run, fed with the same finished exits.
pub fn import_with_max_gap(reader: impl BufRead + Send, format: TextFormat, max_gap_ns: Option<u64>) -> Result<Imported> {
    import_with(reader, format, ImportOptions { max_gap_ns, hw: None }, None)
}

/// Replays a trace in bounded memory (a pool of text blocks, one state per thread, one
/// aggregate entry per exit site), parsing on several threads; every finished exit goes to
/// `records`, in trace order.
pub fn import_with(mut reader: impl BufRead + Send, format: TextFormat, opts: ImportOptions, records: Option<&mut StreamWriter>) -> Result<Imported> {
    // A trace with kvm_exit is from the hw source, where kvm_userspace_exit, kvm_emulate_insn and
    // kvm_fpu also fire but do not delimit exits: decide first, then replay with the same event
    // set the live programs attach.
    match opts.hw {
        Some(hw) => Replay::new(hw, false, opts.max_gap_ns, records).run(Input::Stream(reader), format),
        None => {
            let (hw, head, complete) = look_ahead(&mut reader)?;
            let strict = !hw && !complete;
            let replay = Replay::new(hw, strict, opts.max_gap_ns, records);
            replay.run(Input::Stream(std::io::Cursor::new(head).chain(reader)), format)
        }
    }
}

/// [`import_with`] on a file: mapped and parsed in place where it can be (a regular file),
/// read otherwise (a pipe, a tracefs file). The mapping is dropped block by block behind the
/// replay, so the resident set does not grow with the file.
pub fn import_file(file: &std::fs::File, format: TextFormat, opts: ImportOptions, records: Option<&mut StreamWriter>) -> Result<Imported> {
    let map = match file.metadata() {
        // SAFETY: the trace is only read. Mapping a file is unsound only if someone changes it
        // meanwhile: truncated, reading past its new end raises SIGBUS (as for any program
        // mapping its input); rewritten, the text read changes under the parser, which reads
        // each byte through the slice and checks every field, so it can only misparse.
        Ok(m) if m.is_file() && m.len() > 0 => unsafe { memmap2::Mmap::map(file) }.ok(),
        _ => None,
    };
    let Some(map) = map else {
        return import_with(std::io::BufReader::with_capacity(64 << 10, file), format, opts, records);
    };
    let _ = map.advise(memmap2::Advice::Sequential);
    let hw = match opts.hw {
        Some(hw) => hw,
        None => trace_is_hw(&map[..]).context("reading the trace text")?,
    };
    Replay::new(hw, false, opts.max_gap_ns, records).run(Input::<&[u8]>::Mapped(&map), format)
}

/// One import: the parser every parsing thread starts from, and the state machine.
struct Replay<'s> {
    parser: Parser,
    machine: Machine<'s>,
}

impl<'s> Replay<'s> {
    fn new(hw: bool, strict: bool, max_gap_ns: Option<u64>, records: Option<&'s mut StreamWriter>) -> Replay<'s> {
        let mut agg = Aggregate::new(false);
        let source = if hw { Source::Hw } else { Source::Emulated };
        agg.max_gap_ns = Some(max_gap_ns.unwrap_or(crate::live::session::default_max_gap_ns(source)));
        Replay { parser: Parser::new(hw, strict), machine: Machine::new(hw, agg, records) }
    }

    fn run<R: Read + Send>(self, input: Input<'_, R>, format: TextFormat) -> Result<Imported> {
        let Replay { parser, mut machine } = self;
        let hw = parser.hw;
        let (mut lines, mut events, mut skipped) = (0u64, 0u64, 0u64);
        let mut skipped_lines = Vec::new();
        let (mut first_ts, mut last_ts) = (None, 0u64);
        let mut infos = BTreeMap::new();
        pipeline::run(input, parser, |block| {
            if let Some(at) = block.late_hw {
                bail!(
                    "kvm_exit first appears at line {}, past the first {} MiB of standard input that chose the emulated source: import the file by its path instead of -",
                    lines + at,
                    LOOKAHEAD_BYTES >> 20
                );
            }
            let room = SKIPPED_LINES_KEPT - skipped_lines.len();
            skipped_lines.extend(block.skipped_lines.iter().take(room).map(|l| lines + l));
            lines += block.lines;
            skipped += block.skipped;
            events += block.events.len() as u64;
            if let Some(ts) = block.first_ts {
                first_ts.get_or_insert(ts);
                last_ts = block.last_ts;
            }
            for (tid, info) in block.new_threads {
                infos.entry(tid).or_insert(info);
            }
            block.events.iter().for_each(|p| machine.apply(p));
            Ok(())
        })?;
        if events == 0 {
            bail!("no KVM tracepoint events found in {lines} lines: expected {} text with kvm_exit/kvm_entry (or kvm_emulate_insn/kvm_pio) lines", format.name());
        }
        let agg = machine.finish();
        let meta = Meta {
            source: if hw { Source::Hw } else { Source::Emulated },
            origin: format!("import:{}", format.name()),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            start_unix_ns: first_ts.unwrap_or(0),
            end_unix_ns: last_ts,
            records_requested: machine.records.is_some(),
            ..Meta::default()
        };
        // Every key comes from the importer's own state machine, so each decodes.
        let (profile, _) = agg.into_profile(meta, infos);
        Ok(Imported { profile, lines, events, skipped, skipped_lines })
    }
}

/// The pseudo-random numbers of the import's randomized tests (xorshift64: no dependency, and
/// a failure reproduces from the seed).
#[cfg(test)]
pub(crate) struct XorShift(pub u64);

#[cfg(test)]
impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `seed` with `edits` random one-byte edits (replace, insert or delete) from `alphabet`:
    /// the lines the differential tests feed to a parser and to its reference.
    pub(crate) fn mutated(&mut self, seed: &[u8], alphabet: &[u8], edits: usize) -> Vec<u8> {
        let mut l = seed.to_vec();
        for _ in 0..edits {
            let at = self.next() as usize % (l.len() + 1);
            let c = alphabet[self.next() as usize % alphabet.len()];
            match self.next() % 3 {
                0 if at < l.len() => l[at] = c,
                1 => l.insert(at, c),
                _ if at < l.len() => drop(l.remove(at)),
                _ => {}
            }
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_kvm_exit_past_a_buffer_boundary() {
        let mut t = "x-1 [000] 1.0: kvm_pio: pio_write at 0x80 size 1 count 1 val 0x0\n".repeat(30_000);
        assert!(!trace_is_hw(t.as_bytes()).unwrap());
        t.push_str("q-1 [000] 2.0: kvm_exit: vcpu 0 reason HLT rip 0x1 info1 0x0\n");
        assert!(trace_is_hw(t.as_bytes()).unwrap());
        assert!(!trace_is_hw(&b"kvm_exit: in a comment, not an event\n"[..]).unwrap());
    }
}
