//! The guest side of the batched port-I/O hypercall (format: `vmm/src/hypercall.rs`).

use crate::abi::*;
use core::arch::asm;

/// A queue of port accesses that is replayed by the VMM in one doorbell exit.
pub struct PioQueue {
    pub entries: [PioEntry; BATCH_MAX],
    pub len: usize,
}

impl PioQueue {
    pub const fn new() -> Self {
        PioQueue { entries: [PioEntry { op: 0, size: 0, port: 0, value: 0 }; BATCH_MAX], len: 0 }
    }
    #[inline(always)]
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Queues an OUT of one byte.
    #[inline(always)]
    pub fn outb(&mut self, port: u16, v: u8) {
        self.push(PioEntry { op: BATCH_OP_OUT, size: 1, port, value: v as u32 });
    }
    /// Queues an IN of one byte; returns its index for reading the result after `submit`.
    #[inline(always)]
    pub fn inb(&mut self, port: u16) -> usize {
        self.push(PioEntry { op: BATCH_OP_IN, size: 1, port, value: 0 })
    }
    /// Queues an entry as given, malformed or not (for the hostile workload).
    pub fn push_raw(&mut self, e: PioEntry) -> usize {
        self.push(e)
    }
    #[inline(always)]
    fn push(&mut self, e: PioEntry) -> usize {
        let i = self.len.min(BATCH_MAX - 1);
        self.entries[i] = e;
        self.len = i + 1;
        i
    }
    /// One doorbell exit for the whole queue.
    #[inline(always)]
    pub fn submit(&mut self) -> u32 {
        // SAFETY: the queue is `self.entries`, borrowed mutably for the call, and `len` <=
        // BATCH_MAX (push caps it), so the VMM reads and writes back only these entries.
        unsafe { pio_batch(self.entries.as_mut_ptr() as u64, self.len as u32) }
    }
}

/// Rings the doorbell: EAX = count, RSI = queue address, status returned in EAX.
/// Kept out of line so the doorbell RIP symbolizes to `pio_batch`, whose caller is the
/// function that built the queue.
///
/// # Safety
///
/// If the VMM accepts the queue (status 0: `count` <= BATCH_MAX entries, wholly in RAM,
/// each well-formed) it reads `count` 8-byte [`PioEntry`]s at `queue_gpa` (guest-physical
/// = guest-virtual here) and writes each IN's result back into its `value`: those bytes
/// must be `PioEntry`s the caller may mutate, borrowed by nothing else. A queue the VMM
/// refuses (any other status) is neither replayed nor written, whatever the address.
#[inline(never)]
pub unsafe fn pio_batch(queue_gpa: u64, count: u32) -> u32 {
    let status: u32;
    // SAFETY: the caller upholds the contract above for the memory the VMM may write; the
    // asm is one port write whose only register effects are the declared EAX output (and
    // it may touch memory, so no `nomem`: the compiler keeps the queue's stores before it
    // and reloads it after).
    asm!("out dx, eax", in("dx") PORT_DOORBELL, inout("eax") count => status,
         in("rsi") queue_gpa, options(nostack));
    status
}
