#![allow(dead_code)]
//! The contract between tinyvmm and this guest. The VMM side is `vmm/src/abi.rs`; both
//! must agree on every number here.

/// tinyvmm places a `BootParams` at this guest-physical address and passes it in RDI.
pub const BOOT_PARAMS_MAGIC: u32 = 0x504d_564b; // "KVMP"

#[repr(C)]
pub struct BootParams {
    pub magic: u32,
    pub version: u32,
    pub workload: u32,
    pub flags: u32,
    pub count: u64,
    pub seconds: u64,
    pub ram_size: u64,
}

pub const WL_DISK_WRITE: u32 = 1;
pub const WL_DISK_READ: u32 = 2;
pub const WL_TIMER: u32 = 3;
pub const WL_PIO_LOOP: u32 = 4;
pub const WL_HOSTILE: u32 = 5;
pub const WL_TRIPLE_FAULT: u32 = 6;
pub const WL_TIMER_DISK: u32 = 7;

pub const FLAG_BATCH_PIO: u32 = 1;
pub const FLAG_SKIP_PMTMR_CALIBRATION: u32 = 2;

/// `out` of one byte: the guest's exit status (0 = success). Same port as QEMU's
/// isa-debug-exit default.
pub const PORT_EXIT: u16 = 0x501;
/// Doorbell of the batched port-I/O hypercall: `out dx, eax` with EAX = entry count and
/// RSI = guest-physical address of the queue; the status comes back in EAX.
pub const PORT_DOORBELL: u16 = 0x510;
/// Null device used by the exit-cost benchmark (the classic POST-code port).
pub const PORT_NULL: u16 = 0x80;
pub const PORT_PMTMR: u16 = 0x608;
pub const PORT_COM1: u16 = 0x3f8;

pub const BATCH_MAX: usize = 64;
pub const BATCH_OP_OUT: u8 = 0;
pub const BATCH_OP_IN: u8 = 1;

/// One queued port access. IN results are written back into `value`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PioEntry {
    pub op: u8,
    pub size: u8,
    pub port: u16,
    pub value: u32,
}

pub const BATCH_OK: u32 = 0;
pub const BATCH_ERR_ADDRESS: u32 = 1;
pub const BATCH_ERR_COUNT: u32 = 2;
pub const BATCH_ERR_ENTRY: u32 = 3;
