//! The batched port-I/O hypercall (the paper's "merge successive port I/O" optimisation).
//!
//! KVM passes no custom `vmcall` to user space, so the hypercall is a port doorbell:
//!
//! ```text
//! guest:  RSI = guest-physical address of the queue (8-byte entries, below)
//!         EAX = number of entries (0..=BATCH_MAX)
//!         out 0x510, eax          ; one exit
//!         ; EAX now holds the status
//! ```
//!
//! Queue entry, `#[repr(C)]`, 8 bytes, little-endian:
//!
//! | offset | size | field | meaning |
//! |---|---|---|---|
//! | 0 | 1 | `op`    | 0 = OUT, 1 = IN |
//! | 1 | 1 | `size`  | access width: 1, 2 or 4 bytes |
//! | 2 | 2 | `port`  | I/O port (any but the doorbell itself) |
//! | 4 | 4 | `value` | OUT: the value written (low `size` bytes); IN: overwritten with the value read, zero-extended |
//!
//! The VMM validates the whole queue first, then replays the entries in order on the same
//! port bus a trapped `in`/`out` would reach, then writes the queue back. Status in EAX:
//! 0 OK; 1 the queue is not wholly inside guest RAM; 2 the count is over [`BATCH_MAX`];
//! 3 an entry has an unknown op, a bad size or targets the doorbell. On an error nothing
//! is replayed, and the VMM keeps running.

use crate::abi::{BATCH_ENTRY_SIZE as ENTRY_SIZE, BATCH_ERR_ADDRESS, BATCH_ERR_COUNT, BATCH_ERR_ENTRY, BATCH_MAX, BATCH_OP_IN as OP_IN, BATCH_OP_OUT as OP_OUT, PORT_DOORBELL};
pub use crate::abi::PioEntry;
use crate::bus::PortBus;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};


#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("queue not inside guest RAM")]
    Address = BATCH_ERR_ADDRESS as isize,
    #[error("entry count over the limit")]
    Count = BATCH_ERR_COUNT as isize,
    #[error("malformed queue entry")]
    Entry = BATCH_ERR_ENTRY as isize,
}


/// Replays a queue; returns the number of entries run. `on_entry` sees each replayed port.
pub fn replay(
    mem: &GuestMemoryMmap,
    bus: &mut PortBus,
    gpa: u64,
    count: u32,
    mut on_entry: impl FnMut(u16),
) -> Result<u32, BatchError> {
    if count as usize > BATCH_MAX {
        return Err(BatchError::Count);
    }
    if count == 0 {
        return Ok(0);
    }
    let n = count as usize;
    let mut raw = [0u8; BATCH_MAX * ENTRY_SIZE];
    let bytes = &mut raw[..n * ENTRY_SIZE];
    gpa.checked_add(bytes.len() as u64).ok_or(BatchError::Address)?;
    mem.read_slice(bytes, GuestAddress(gpa)).map_err(|_| BatchError::Address)?;
    let mut entries = [PioEntry::default(); BATCH_MAX];
    for (e, b) in entries.iter_mut().zip(bytes.chunks_exact(ENTRY_SIZE)) {
        *e = PioEntry {
            op: b[0],
            size: b[1],
            port: u16::from_le_bytes([b[2], b[3]]),
            value: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        };
        let size_ok = matches!(e.size, 1 | 2 | 4);
        if !size_ok || e.op > OP_IN || e.port == PORT_DOORBELL {
            return Err(BatchError::Entry);
        }
    }
    for e in entries[..n].iter_mut() {
        let size = usize::from(e.size);
        on_entry(e.port);
        if e.op == OP_OUT {
            bus.write(e.port, &e.value.to_le_bytes()[..size]);
        } else {
            let mut v = [0u8; 4];
            bus.read(e.port, &mut v[..size]);
            e.value = u32::from_le_bytes(v);
        }
    }
    for (e, b) in entries[..n].iter().zip(bytes.chunks_exact_mut(ENTRY_SIZE)) {
        b[4..8].copy_from_slice(&e.value.to_le_bytes());
    }
    mem.write_slice(bytes, GuestAddress(gpa)).map_err(|_| BatchError::Address)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{BATCH_OP_IN, BATCH_OP_OUT, PORT_COM1, PORT_PMTMR};
    use crate::devices::{debug::DebugPorts, ide::Ide, pic::Pic, pit::Pit, pmtimer::PmTimer, serial::Uart};

    const RAM: u64 = 1 << 20;
    const SECTORS: usize = 8;

    fn setup() -> (tempfile::TempDir, std::path::PathBuf, GuestMemoryMmap, PortBus) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0u8; SECTORS * 512]).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let ide = Ide::new(f).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let bus = PortBus::new(Uart::new(PORT_COM1, false), Pit::new(None), Pic::new(), PmTimer::new(PORT_PMTMR), Some(ide), DebugPorts::default());
        (dir, path, mem, bus)
    }

    fn out(port: u16, size: u8, value: u32) -> PioEntry {
        PioEntry { op: BATCH_OP_OUT, size, port, value }
    }
    fn inp(port: u16) -> PioEntry {
        PioEntry { op: BATCH_OP_IN, size: 1, port, value: 0 }
    }

    fn put(mem: &GuestMemoryMmap, gpa: u64, q: &[PioEntry]) {
        for (i, e) in q.iter().enumerate() {
            mem.write_obj(*e, GuestAddress(gpa + (i * ENTRY_SIZE) as u64)).unwrap();
        }
    }
    fn get(mem: &GuestMemoryMmap, gpa: u64, n: usize) -> Vec<PioEntry> {
        (0..n).map(|i| mem.read_obj(GuestAddress(gpa + (i * ENTRY_SIZE) as u64)).unwrap()).collect()
    }

    /// Replays `q` written at `gpa`; returns the result and the ports `on_entry` saw.
    fn ring(mem: &GuestMemoryMmap, bus: &mut PortBus, gpa: u64, q: &[PioEntry], count: u32) -> (Result<u32, BatchError>, Vec<u16>) {
        put(mem, gpa, q);
        let mut seen = Vec::new();
        let r = replay(mem, bus, gpa, count, |p| seen.push(p));
        (r, seen)
    }

    /// The bus state a replayed entry would change: IDE commands, PIC EOIs, unclaimed
    /// accesses, null-port writes.
    fn bus_state(bus: &PortBus) -> (u64, u64, u64, u64) {
        (bus.ide.as_ref().unwrap().stats.commands, bus.pic.eois, bus.unclaimed, bus.debug.null_writes)
    }

    /// The guest's batched `ide_do_rw_disk` queue for one sector at `lba`: ready, the 11
    /// task-file writes, the command, DRQ.
    fn ide_queue(lba: u64, cmd: u8) -> Vec<PioEntry> {
        let b = |s: u32| u32::from((lba >> s) as u8);
        let mut q = vec![inp(0x1f7)];
        for (p, v) in [(0x1f1, 0), (0x1f2, 0), (0x1f3, b(24)), (0x1f4, b(32)), (0x1f5, b(40)), (0x1f1, 0), (0x1f2, 1), (0x1f3, b(0)), (0x1f4, b(8)), (0x1f5, b(16)), (0x1f6, 0x40), (0x1f7, u32::from(cmd))] {
            q.push(out(p, 1, v));
        }
        q.push(inp(0x1f7));
        q
    }

    /// After whatever came before: a reset, one sector written and read back, all through
    /// well-formed batches (the data through the trapped data port, as the guest does).
    /// Checks every replayed value, the ports replayed in order, the image and the data.
    fn batched_reset_write_read(mem: &GuestMemoryMmap, bus: &mut PortBus, path: &std::path::Path, gpa: u64, lba: u64, seed: u16) {
        let reset = [out(0x1f6, 1, 0x40), out(0x3f6, 1, 0x06), inp(0x3f6), out(0x3f6, 1, 0x02), inp(0x1f7), inp(0x1f1), out(0x20, 1, 0x20)];
        let eois = bus.pic.eois;
        let (r, seen) = ring(mem, bus, gpa, &reset, reset.len() as u32);
        assert_eq!(r, Ok(reset.len() as u32));
        assert_eq!(seen, reset.iter().map(|e| e.port).collect::<Vec<_>>());
        let back = get(mem, gpa, reset.len());
        assert_eq!([back[2].value, back[4].value, back[5].value], [0x80, 0x50, 0x01], "BSY in reset; DRDY|DSC and diagnostic 1 after");
        assert_eq!(back[1].value, 0x06, "OUT values are written back unchanged");
        assert_eq!(bus.pic.eois, eois + 1, "the EOI in the batch reached the PIC once");

        let data: Vec<u8> = (0..512u16).map(|i| (i.wrapping_mul(31) ^ seed) as u8).collect();
        for (cmd, dir_in) in [(0x34u8, false), (0x24, true)] {
            let q = ide_queue(lba, cmd);
            let (r, seen) = ring(mem, bus, gpa, &q, q.len() as u32);
            assert_eq!(r, Ok(14));
            assert_eq!(seen, q.iter().map(|e| e.port).collect::<Vec<_>>());
            let back = get(mem, gpa, q.len());
            assert_eq!((back[0].value, back[13].value), (0x50, 0x58), "ready, then DRQ");
            if dir_in {
                let mut got = vec![0u8; 512];
                for w in got.chunks_exact_mut(2) {
                    bus.read(0x1f0, w);
                }
                assert!(got == data, "read back what was written");
            } else {
                for w in data.chunks_exact(2) {
                    bus.write(0x1f0, w);
                }
                let img = std::fs::read(path).unwrap();
                assert!(img[lba as usize * 512..][..512] == data[..], "the image holds the sector");
            }
            let mut st = [0u8];
            bus.read(0x1f7, &mut st);
            assert_eq!(st[0], 0x50, "done, no error");
        }
    }

    #[test]
    fn malformed_queues_replay_nothing_and_a_well_formed_one_then_works() {
        let (_t, path, mem, mut bus) = setup();
        let q = 0x8000u64;
        batched_reset_write_read(&mem, &mut bus, &path, q, 1, 1);
        // A valid prefix that would change the bus if replayed: an EOI, an IDE command,
        // an unclaimed port, the null port.
        let prefix = [out(0x20, 1, 0x20), out(0x1f6, 1, 0x40), out(0x1f7, 1, 0xec), inp(0x1234), out(0x80, 1, 0)];
        let cases: Vec<(Vec<PioEntry>, u64, u32, BatchError)> = vec![
            (prefix.to_vec(), RAM + 0x1000, 5, BatchError::Address),
            (prefix.to_vec(), RAM - 8, 5, BatchError::Address),
            (prefix.to_vec(), u64::MAX - 3, 2, BatchError::Address),
            (prefix.to_vec(), q, BATCH_MAX as u32 + 1, BatchError::Count),
            (prefix.to_vec(), q, u32::MAX, BatchError::Count),
            ([&prefix[..], &[PioEntry { op: 2, size: 1, port: 0x80, value: 0 }]].concat(), q, 6, BatchError::Entry),
            ([&prefix[..], &[PioEntry { op: 0xff, size: 1, port: 0x80, value: 0 }]].concat(), q, 6, BatchError::Entry),
            ([&prefix[..], &[out(0x80, 3, 0)]].concat(), q, 6, BatchError::Entry),
            ([&prefix[..], &[out(0x80, 0, 0)]].concat(), q, 6, BatchError::Entry),
            ([&prefix[..], &[out(0x80, 8, 0)]].concat(), q, 6, BatchError::Entry),
            ([&prefix[..], &[out(PORT_DOORBELL, 4, 5)]].concat(), q, 6, BatchError::Entry),
            ([&[inp(PORT_DOORBELL)], &prefix[..]].concat(), q, 6, BatchError::Entry),
        ];
        for (i, (entries, gpa, count, want)) in cases.into_iter().enumerate() {
            let before = bus_state(&bus);
            let in_ram = gpa.checked_add(entries.len() as u64 * 8).is_some_and(|end| end <= RAM);
            let (r, seen) = if in_ram {
                ring(&mem, &mut bus, gpa, &entries, count)
            } else {
                let mut seen = Vec::new();
                (replay(&mem, &mut bus, gpa, count, |p| seen.push(p)), seen)
            };
            assert_eq!(r, Err(want), "case {i}");
            assert!(seen.is_empty(), "case {i}: replayed {seen:?}");
            assert_eq!(bus_state(&bus), before, "case {i}: the bus changed");
            if in_ram {
                assert_eq!(get(&mem, gpa, entries.len()), entries, "case {i}: the queue was written back");
            }
            batched_reset_write_read(&mem, &mut bus, &path, q, (i % SECTORS) as u64, i as u16);
        }
    }

    #[test]
    fn random_queues_never_panic_replay_all_or_nothing_and_a_well_formed_one_then_works() {
        let (_t, path, mem, mut bus) = setup();
        let mut x = 0x1234_5678u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let (mut ok, mut refused) = (0, 0);
        for round in 0..400 {
            let count = next() % 70;
            let gpa = match next() % 8 {
                0 => RAM - u64::from(next() % 1024),
                1 => u64::MAX - u64::from(next() % 1024),
                _ => 0x1_0000 + u64::from(next() % 0x1000),
            };
            // Entries on ports that matter (the exit port 0x501 only sets a flag here):
            // all random bytes, all well-formed, or well-formed with one bad entry.
            let mode = next() % 3;
            let bad_at = if count > 0 { next() % count } else { 0 };
            let entries: Vec<PioEntry> = (0..count)
                .map(|i| {
                    let r = next();
                    let ports = [0x1f0, 0x1f1, 0x1f2, 0x1f3, 0x1f4, 0x1f5, 0x1f6, 0x1f7, 0x3f6, 0x20, 0x21, 0x40, 0x43, 0x3f8, 0x608, 0x501, 0x1234];
                    let port = ports[(r % ports.len() as u32) as usize];
                    let value = next();
                    match (mode, i == bad_at) {
                        (0, _) => PioEntry { op: (r >> 24) as u8, size: (r >> 16) as u8, port: (r >> 5) as u16, value },
                        (2, true) => [PioEntry { op: 2, size: 1, port, value }, out(port, 3, value), out(PORT_DOORBELL, 1, value)][(r >> 8) as usize % 3],
                        _ => PioEntry { op: ((r >> 24) & 1) as u8, size: [1, 2, 4][(r >> 20) as usize % 3], port, value },
                    }
                })
                .collect();
            let in_ram = gpa.checked_add(u64::from(count) * 8).is_some_and(|end| end <= RAM);
            let before = in_ram.then(|| {
                put(&mem, gpa, &entries);
                get(&mem, gpa, entries.len())
            });
            let mut seen = 0u32;
            match replay(&mem, &mut bus, gpa, count, |_| seen += 1) {
                Ok(n) => {
                    ok += 1;
                    assert_eq!((n, seen), (count, count), "round {round}: all entries replayed");
                }
                Err(_) => {
                    refused += 1;
                    assert_eq!(seen, 0, "round {round}: a refused queue replayed entries");
                    if let Some(b) = before {
                        assert_eq!(get(&mem, gpa, b.len()), b, "round {round}: a refused queue was written back");
                    }
                }
            }
            if round % 50 == 49 {
                batched_reset_write_read(&mem, &mut bus, &path, 0x8000, u64::from(next()) % SECTORS as u64, round as u16);
            }
        }
        assert!(ok >= 50 && refused >= 100, "{ok} replayed, {refused} refused: the garbage should exercise both");
        batched_reset_write_read(&mem, &mut bus, &path, 0x8000, 7, 0xbeef);
    }
}
