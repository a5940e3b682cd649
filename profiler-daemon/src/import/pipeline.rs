//! The import's threads: one reads the text in blocks of whole lines, several parse blocks
//! side by side, and the caller replays the parsed blocks in file order (the state machines
//! must see every thread's events in order; parsing needs no order).
//!
//! Memory is bounded whatever the input's size: the blocks circulate in a fixed pool (the
//! reader waits for one to come back from the replay), so at most [`blocks_in_flight`] blocks
//! and their parsed events exist at once.
use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use memmap2::{Mmap, UncheckedAdvice};

use super::parse::{ParsedBlock, Parser};

/// Where the text comes from.
pub(super) enum Input<'m, R> {
    /// Read in blocks (standard input, pipes, files that cannot be mapped).
    Stream(R),
    /// A file mapped whole: blocks are ranges of the mapping, parsed in place (no copy out of
    /// the page cache); each block's pages are unmapped once it is replayed, so the resident
    /// set stays the pool's size.
    Mapped(&'m Mmap),
}

/// One block of whole lines.
enum Text {
    Buf(Vec<u8>),
    Mapped(Range<usize>),
}

impl Text {
    fn bytes<'a>(&'a self, map: Option<&'a Mmap>) -> &'a [u8] {
        match self {
            Text::Buf(b) => b,
            Text::Mapped(r) => map.map_or(&[][..], |m| &m[r.clone()]),
        }
    }
}

/// Bytes of text per block: large enough that the threads hand over blocks rarely, small
/// enough that the pool stays a few MiB.
pub(super) const BLOCK_BYTES: usize = 1 << 20;

/// How far before a block its pages are dropped too ([`drop_pages`]).
const DROP_BEHIND: usize = 256 << 10;

/// Parsing threads: one per CPU (at least 1, at most 8); the reader and the replay run
/// beside them.
fn parsers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8)
}

/// Blocks in the pool: each parser busy with one and one waiting, plus one being read and
/// one being replayed.
fn blocks_in_flight(parsers: usize) -> usize {
    2 * parsers + 2
}

/// Reads `input` in blocks of whole lines, parses them on several threads with clones of
/// `parser`, and calls `replay` with each parsed block in file order. `replay` returning an
/// error stops everything; so does a read error.
pub(super) fn run<R: Read + Send>(input: Input<'_, R>, parser: Parser, mut replay: impl FnMut(ParsedBlock) -> Result<()>) -> Result<()> {
    let n = parsers();
    let map = match &input {
        Input::Mapped(m) => Some(*m),
        Input::Stream(_) => None,
    };
    let (pool_tx, pool_rx) = mpsc::channel::<Text>();
    for _ in 0..blocks_in_flight(n) {
        let _ = pool_tx.send(match map {
            Some(_) => Text::Mapped(0..0),
            None => Text::Buf(Vec::with_capacity(BLOCK_BYTES + 4096)),
        });
    }
    let (work_tx, work_rx) = mpsc::sync_channel::<(u64, Text)>(n);
    // Owned by the parsers only: when they have all stopped (the replay failed), the reader's
    // next hand-over fails instead of waiting for them forever.
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = mpsc::channel::<(u64, Text, ParsedBlock)>();
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || match input {
            Input::Stream(r) => read_blocks(r, pool_rx, work_tx),
            Input::Mapped(m) => cut_blocks(m, pool_rx, work_tx),
        });
        for _ in 0..n {
            let (work_rx, done_tx, mut parser) = (Arc::clone(&work_rx), done_tx.clone(), parser.clone());
            scope.spawn(move || loop {
                // The lock is held only to take the next block: blocks go out in file order.
                let job = work_rx.lock().map_err(|_| ()).and_then(|rx| rx.recv().map_err(|_| ()));
                let Ok((seq, text)) = job else { return };
                let parsed = parser.block(text.bytes(map));
                if done_tx.send((seq, text, parsed)).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        drop(work_rx);
        // In file order: blocks parsed out of order wait here (at most the pool's size).
        let mut waiting = BTreeMap::new();
        let mut next = 0u64;
        let replayed = (|| {
            for (seq, text, parsed) in &done_rx {
                waiting.insert(seq, (text, parsed));
                while let Some((text, parsed)) = waiting.remove(&next) {
                    replay(parsed)?;
                    let _ = pool_tx.send(text);
                    next += 1;
                }
            }
            Ok(())
        })();
        // On an error the pool's sender and the parsed blocks' receiver go away, which stops
        // the reader and the parsers at their next block.
        drop(pool_tx);
        drop(done_rx);
        let read = reader.join().map_err(|_| anyhow::anyhow!("the import's reading thread failed"))?;
        replayed.and(read)
    })
}

/// Unmaps a replayed block's pages: mapped page-cache pages count in the resident set, so
/// without this it would grow to the file's size. A page shared with the next block is only
/// faulted in again from the page cache. Done by the reading thread when the block comes back
/// to the pool, off the replay's path.
///
/// The kernel maps the pages around a faulting one too (`fault_around_bytes`, 64 KiB by
/// default, aligned): the first faults of the next block map pages back at the end of this
/// one, after it was dropped. So the range dropped reaches [`DROP_BEHIND`] before the block:
/// what the block's own first faults mapped back into the one before.
fn drop_pages(map: &Mmap, range: &Range<usize>) {
    let range = range.start.saturating_sub(DROP_BEHIND)..range.end;
    // SAFETY: the mapping is of a file, read-only and shared: MADV_DONTNEED only drops this
    // process's page-table entries, and a later read faults the same file bytes back in
    // (unlike a private anonymous mapping, nothing is zeroed), so a slice of the range, if
    // one were still read, would read the same bytes. None is: the block and the one before
    // are parsed and replayed.
    let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, range.start, range.len()) };
}

/// Cuts the mapped text into blocks of whole lines (a block ends after the last newline in
/// its [`BLOCK_BYTES`], or after a line longer than that) and hands them out numbered.
fn cut_blocks(map: &Mmap, pool: Receiver<Text>, work: SyncSender<(u64, Text)>) -> Result<()> {
    let mut start = 0;
    let mut seq = 0u64;
    while start < map.len() {
        let Ok(done) = pool.recv() else { return Ok(()) };
        if let Text::Mapped(r) = done {
            drop_pages(map, &r);
        }
        let limit = (start + BLOCK_BYTES).min(map.len());
        let end = if limit == map.len() {
            limit
        } else {
            match memchr::memrchr(b'\n', &map[start..limit]) {
                Some(i) => start + i + 1,
                None => memchr::memchr(b'\n', &map[limit..]).map_or(map.len(), |i| limit + i + 1),
            }
        };
        if work.send((seq, Text::Mapped(start..end))).is_err() {
            return Ok(());
        }
        start = end;
        seq += 1;
    }
    Ok(())
}

/// Fills blocks from the pool with whole lines (a line cut by the block's end moves to the
/// next block) and hands them out numbered. A line longer than a block grows its block.
fn read_blocks(mut input: impl Read, pool: Receiver<Text>, work: SyncSender<(u64, Text)>) -> Result<()> {
    let mut carry: Vec<u8> = Vec::new();
    let mut seq = 0u64;
    let mut eof = false;
    while !eof {
        let Ok(text) = pool.recv() else { return Ok(()) };
        let mut block = match text {
            Text::Buf(b) => b,
            Text::Mapped(_) => Vec::new(),
        };
        block.clear();
        block.append(&mut carry);
        loop {
            let want = BLOCK_BYTES.saturating_sub(block.len()).max(64 << 10);
            let got = (&mut input).take(want as u64).read_to_end(&mut block).context("reading the trace text")?;
            if got < want {
                eof = true;
                break;
            }
            // Cut after the last newline; without one the block holds part of one long line.
            if let Some(i) = memchr::memrchr(b'\n', &block) {
                carry.extend_from_slice(&block[i + 1..]);
                block.truncate(i + 1);
                break;
            }
        }
        if block.is_empty() {
            break;
        }
        if work.send((seq, Text::Buf(block))).is_err() {
            return Ok(());
        }
        seq += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line reaches the replay once, in order, whatever the block boundaries.
    #[test]
    fn lines_cross_block_boundaries_in_order() {
        let mut text = Vec::new();
        let n = 60_000u64;
        for i in 0..n {
            text.extend_from_slice(format!("CPU 0/KVM-10 (9) [000] d..2. {}.{:06}: kvm_entry: vcpu 0, rip 0x{i:x}\n", 1 + i / 1_000_000, i % 1_000_000).as_bytes());
        }
        // A line longer than a block, then a last line without a newline.
        text.extend_from_slice(&vec![b'x'; BLOCK_BYTES + 10]);
        text.extend_from_slice(b"\nCPU 0/KVM-10 (9) [000] d..2. 9.0: kvm_entry: vcpu 0, rip 0x1");
        assert!(text.len() > 3 * BLOCK_BYTES);
        let (mut lines, mut ts, mut skipped) = (0, Vec::new(), Vec::new());
        run(Input::Stream(&text[..]), Parser::new(true, false), |b| {
            skipped.extend(b.skipped_lines.iter().map(|l| l + lines));
            lines += b.lines;
            ts.extend(b.events.iter().map(|e| e.ts));
            Ok(())
        })
        .unwrap();
        assert_eq!(lines, n + 2);
        assert_eq!(skipped, vec![n + 1]);
        assert_eq!(ts.len() as u64, n + 1);
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "events replayed in file order");
    }

    /// A mapped file gives the same blocks' contents as the same bytes read, with or without
    /// a newline at the end.
    #[test]
    fn a_mapped_file_replays_as_the_same_text_read() {
        let mut text = Vec::new();
        for i in 0..40_000u64 {
            text.extend_from_slice(format!("CPU 0/KVM-10 (9) [000] d..2. {}.{:06}: kvm_entry: vcpu 0, rip 0x{i:x}\n", 1 + i / 1_000_000, i % 1_000_000).as_bytes());
            if i % 9_999 == 0 {
                text.extend_from_slice(b"not a trace line\n");
            }
        }
        text.extend_from_slice(&vec![b'y'; BLOCK_BYTES + 3]);
        for tail in [&b"\nx-1 [000] 9.0: kvm_entry: vcpu 0, rip 0x1"[..], b"\n"] {
            let mut t = text.clone();
            t.extend_from_slice(tail);
            let summary = |input: Input<'_, &[u8]>| {
                let mut out = (0u64, Vec::new(), Vec::new());
                run(input, Parser::new(true, false), |b| {
                    out.2.extend(b.skipped_lines.iter().map(|l| l + out.0));
                    out.0 += b.lines;
                    out.1.extend(b.events.iter().map(|e| e.ts));
                    Ok(())
                })
                .unwrap();
                out
            };
            let mut f = tempfile::tempfile().unwrap();
            std::io::Write::write_all(&mut f, &t).unwrap();
            // SAFETY: a private temporary file nobody else writes.
            let map = unsafe { Mmap::map(&f) }.unwrap();
            let (read, mapped) = (summary(Input::Stream(&t[..])), summary(Input::Mapped(&map)));
            assert_eq!(read, mapped);
            assert_eq!((read.1.len(), read.2.len()), (40_000 + usize::from(tail.len() > 1), 6), "5 lines not understood and the long one");
        }
    }

    #[test]
    fn a_replay_error_stops_the_reader_and_parsers() {
        let text = "x-1 [000] 1.0: kvm_pio: pio_write at 0x80 size 1 count 1 val 0x0\n".repeat(100_000);
        let mut calls = 0;
        let r = run(Input::Stream(text.as_bytes()), Parser::new(false, false), |_| {
            calls += 1;
            anyhow::bail!("stop")
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
