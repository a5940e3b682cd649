//! The contract between tinyvmm and its bundled guest, defined once for both sides: the guest
//! (`vmm/guest`, `no_std`) and the VMM (`vmm`, with the `vm-memory` feature).
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
//!
//! ## Features
//!
//! - `vm-memory`: `vm_memory::ByteValued` for [`BootParams`] and [`PioEntry`] (the VMM side).
//! - `stats`: the [`stats`] module, tinyvmm's `--stats-json` document as serde types
//!   (needs `alloc` and serde only).
#![cfg_attr(not(test), no_std)]

#[cfg(feature = "stats")]
extern crate alloc;

pub mod net;
pub mod rtl8139;
#[cfg(feature = "stats")]
pub mod stats;

/// `BootParams::magic`: "KVMP".
pub const BOOT_PARAMS_MAGIC: u32 = 0x504d_564b;
/// 2: the network fields (`net_*`) were added after `ram_size`.
pub const BOOT_PARAMS_VERSION: u32 = 2;
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
    /// Network workloads: datagram size in bytes (UDP payload, `--size`).
    pub net_size: u32,
    /// Network workloads: the driver's receive mode, [`net::NIC_MODE_IRQ`] or
    /// [`net::NIC_MODE_NAPI`] (`--nic-mode`).
    pub net_mode: u32,
    /// The guest's IPv4 address (`--guest-ip`), octets in network order.
    pub net_guest_ip: [u8; 4],
    /// Its gateway, octets in network order.
    pub net_gateway: [u8; 4],
    /// Where `net-tx` sends (HostA), octets in network order.
    pub net_peer_ip: [u8; 4],
    /// The UDP port `net-tx` sends to and `net-rx` listens on.
    pub net_port: u16,
    /// Prefix length of `net_guest_ip`'s subnet.
    pub net_prefix: u8,
    pub _reserved: u8,
}

pub const WL_DISK_WRITE: u32 = 1;
pub const WL_DISK_READ: u32 = 2;
pub const WL_TIMER: u32 = 3;
pub const WL_PIO_LOOP: u32 = 4;
pub const WL_HOSTILE: u32 = 5;
pub const WL_TRIPLE_FAULT: u32 = 6;
pub const WL_TIMER_DISK: u32 = 7;
/// A seeded random stream of port accesses, hypercalls and IDE commands (`vmm/guest/src/chaos.rs`).
pub const WL_CHAOS: u32 = 8;
/// Answer ping and UDP echo (port 7) for `seconds` (`vmm/guest/src/net/`).
pub const WL_NET_ECHO: u32 = 9;
/// Receive `count` datagrams of the [`net`] stream format on `net_port`, checking each.
pub const WL_NET_RX: u32 = 10;
/// Send `count` datagrams of `net_size` bytes to `net_peer_ip:net_port`.
pub const WL_NET_TX: u32 = 11;
/// Misprogram the NIC on purpose (descriptors outside RAM, oversized frames, a ring
/// outside RAM, a tiny ring that overflows), then check it still sends and receives.
pub const WL_NET_HOSTILE: u32 = 12;
/// Accept one TCP connection on [`net::TCP_STREAM_PORT`] and read it to its end, checking
/// every byte against [`net::tcp_stream_byte`].
pub const WL_NET_TCP_RX: u32 = 13;

pub const FLAG_BATCH_PIO: u32 = 1;
pub const FLAG_SKIP_PMTMR_CALIBRATION: u32 = 2;

/// One byte written here ends the run; the byte is the guest's exit status (0 = success).
/// Same port as QEMU's isa-debug-exit default.
pub const PORT_EXIT: u16 = 0x501;
/// Doorbell of the batched port-I/O hypercall: `out dx, eax` with EAX = entry count and
/// RSI = guest-physical address of the queue; the status comes back in EAX.
pub const PORT_DOORBELL: u16 = 0x510;
/// A null device (the classic POST-code port): used by the exit-cost benchmark.
pub const PORT_NULL: u16 = 0x80;
/// ACPI PM timer (PIIX4's PMBASE 0x600 + 8, as under QEMU).
pub const PORT_PMTMR: u16 = 0x608;
pub const PORT_COM1: u16 = 0x3f8;
/// I/O base of the RTL8139-compatible NIC (`--net`): its 256-byte register window.
pub const PORT_NIC: u16 = 0xc000;
/// The NIC's interrupt line on the (master) PIC.
pub const NIC_IRQ: u8 = 5;

/// The line prefix of the guest's result report on the serial console.
pub const RESULT_PREFIX: &str = "@@result ";

/// Most entries one doorbell may carry.
pub const BATCH_MAX: usize = 64;
/// Size of one [`PioEntry`] in guest memory.
pub const BATCH_ENTRY_SIZE: usize = 8;
pub const BATCH_OP_OUT: u8 = 0;
pub const BATCH_OP_IN: u8 = 1;

/// One queued port access, `#[repr(C)]`, 8 bytes, little-endian. IN results are written back
/// into `value` (zero-extended).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PioEntry {
    pub op: u8,
    /// Access width: 1, 2 or 4 bytes.
    pub size: u8,
    pub port: u16,
    pub value: u32,
}

/// Doorbell status codes, returned in EAX.
pub const BATCH_OK: u32 = 0;
/// The queue is not wholly inside guest RAM.
pub const BATCH_ERR_ADDRESS: u32 = 1;
/// The count is over [`BATCH_MAX`].
pub const BATCH_ERR_COUNT: u32 = 2;
/// An entry has an unknown op, a bad size, or targets the doorbell.
pub const BATCH_ERR_ENTRY: u32 = 3;

const _: () = assert!(core::mem::size_of::<PioEntry>() == BATCH_ENTRY_SIZE);
const _: () = assert!(core::mem::size_of::<BootParams>() == 64);

#[cfg(feature = "vm-memory")]
mod guest_memory {
    // SAFETY: BootParams is repr(C) of plain integers and byte arrays (u32 x4, u64 x3,
    // u32 x2, [u8; 4] x3, u16, u8 x2) with no padding (its size is checked above to be 64
    // = the sum of its fields); any bit pattern is a valid value.
    unsafe impl vm_memory::ByteValued for super::BootParams {}
    // SAFETY: PioEntry is repr(C) of plain integers (u8, u8, u16, u32) with no padding
    // (its size is checked above to be 8); any bit pattern is a valid value.
    unsafe impl vm_memory::ByteValued for super::PioEntry {}
}
