//! The contract between tinyvmm and its bundled guest (mirrored in `guest/src/abi.rs`).
//!
//! ## Guest memory layout (identity-mapped, guest-virtual == guest-physical)
//!
//! | guest-physical | what |
//! |---|---|
//! | `0x0500`  | GDT: null, 64-bit code (selector 0x08), data (0x10) |
//! | `0x7000`  | [`BootParams`], its address passed in RDI |
//! | `0x9000`  | PML4, `0xa000` PDPT, `0xb000` page directory: the first 1 GiB (or all RAM) in 2 MiB pages |
//! | `0x100000`| the guest ELF, loaded at its link addresses (its `PT_LOAD` physical addresses) |
//!
//! Since the guest runs at its link addresses, a guest RIP symbolizes directly against the
//! ELF written by `tinyvmm guest-elf -o FILE`.

/// `BootParams::magic`: "KVMP".
pub const BOOT_PARAMS_MAGIC: u32 = 0x504d_564b;
pub const BOOT_PARAMS_VERSION: u32 = 1;
pub const BOOT_PARAMS_ADDR: u64 = 0x7000;
pub const GDT_ADDR: u64 = 0x500;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
/// The guest image must lie at or above this address (below it are the boot structures).
pub const KERNEL_MIN_ADDR: u64 = 0x10_0000;

/// Workload selection handed to the guest, `#[repr(C)]`, little-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BootParams {
    pub magic: u32,
    pub version: u32,
    pub workload: u32,
    pub flags: u32,
    pub count: u64,
    pub seconds: u64,
    pub ram_size: u64,
}

// SAFETY: plain integers, no padding (4*4 + 3*8 bytes).
unsafe impl vm_memory::ByteValued for BootParams {}

pub const WL_DISK_WRITE: u32 = 1;
pub const WL_DISK_READ: u32 = 2;
pub const WL_TIMER: u32 = 3;
pub const WL_PIO_LOOP: u32 = 4;
pub const WL_HOSTILE: u32 = 5;
pub const WL_TRIPLE_FAULT: u32 = 6;
pub const WL_TIMER_DISK: u32 = 7;

pub const FLAG_BATCH_PIO: u32 = 1;
pub const FLAG_SKIP_PMTMR_CALIBRATION: u32 = 2;

/// One byte written here ends the run; the byte is the guest's exit status.
pub const PORT_EXIT: u16 = 0x501;
/// Doorbell of the batched port-I/O hypercall (see [`crate::hypercall`]).
pub const PORT_DOORBELL: u16 = 0x510;
/// A null device (POST-code port): used by the exit-cost benchmark.
pub const PORT_NULL: u16 = 0x80;
/// ACPI PM timer (PIIX4's PMBASE 0x600 + 8, as under QEMU).
pub const PORT_PMTMR: u16 = 0x608;
pub const PORT_COM1: u16 = 0x3f8;

/// The line prefix of the guest's result report on the serial console.
pub const RESULT_PREFIX: &str = "@@result ";
