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
