//! The import's threads: one reads the text in blocks of whole lines, several parse blocks
//! side by side, and the caller replays the parsed blocks in file order (the state machines
//! must see every thread's events in order; parsing needs no order).
//!
//! Memory is bounded whatever the input's size: the blocks circulate in a fixed pool (the
//! reader waits for one to come back from the replay), so at most [`blocks_in_flight`] blocks
//! and their parsed events exist at once.
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use super::parse::{ParsedBlock, Parser};

/// Bytes of text per block: large enough that the threads hand over blocks rarely, small
/// enough that the pool stays a few MiB.
pub(super) const BLOCK_BYTES: usize = 1 << 20;

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
pub(super) fn run(input: impl Read + Send, parser: Parser, mut replay: impl FnMut(ParsedBlock) -> Result<()>) -> Result<()> {
    let n = parsers();
    let (pool_tx, pool_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..blocks_in_flight(n) {
        let _ = pool_tx.send(Vec::with_capacity(BLOCK_BYTES + 4096));
    }
    let (work_tx, work_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(n);
    // Owned by the parsers only: when they have all stopped (the replay failed), the reader's
    // next hand-over fails instead of waiting for them forever.
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = mpsc::channel::<(u64, Vec<u8>, ParsedBlock)>();
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_blocks(input, pool_rx, work_tx));
        for _ in 0..n {
            let (work_rx, done_tx, mut parser) = (Arc::clone(&work_rx), done_tx.clone(), parser.clone());
            scope.spawn(move || loop {
                // The lock is held only to take the next block: blocks go out in file order.
                let job = work_rx.lock().map_err(|_| ()).and_then(|rx| rx.recv().map_err(|_| ()));
                let Ok((seq, text)) = job else { return };
                let parsed = parser.block(&text);
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

/// Fills blocks from the pool with whole lines (a line cut by the block's end moves to the
/// next block) and hands them out numbered. A line longer than a block grows its block.
fn read_blocks(mut input: impl Read, pool: Receiver<Vec<u8>>, work: SyncSender<(u64, Vec<u8>)>) -> Result<()> {
    let mut carry: Vec<u8> = Vec::new();
    let mut seq = 0u64;
    let mut eof = false;
    while !eof {
        let Ok(mut block) = pool.recv() else { return Ok(()) };
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
        if work.send((seq, block)).is_err() {
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
        run(&text[..], Parser::new(true, false), |b| {
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

    #[test]
    fn a_replay_error_stops_the_reader_and_parsers() {
        let text = "x-1 [000] 1.0: kvm_pio: pio_write at 0x80 size 1 count 1 val 0x0\n".repeat(100_000);
        let mut calls = 0;
        let r = run(text.as_bytes(), Parser::new(false, false), |_| {
            calls += 1;
            anyhow::bail!("stop")
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
