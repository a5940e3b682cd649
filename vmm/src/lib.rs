//! # tinyvmm
//!
//! A minimal KVM VMM (on kvm-ioctls, kvm-bindings, vm-memory, vm-superio, linux-loader)
//! with the devices and the two optimisations of Zhang et al., "Evaluating and Optimizing
//! I/O Virtualization in KVM", and a bundled `no_std` guest that exercises them.
//!
//! - Devices, one module each under [`devices`], all on one port bus ([`bus::PortBus`]):
//!   16550 UART (COM1, 0x3f8), i8254 PIT (0x40-0x43), 8259 PIC (0x20/0x21, 0xa0/0xa1),
//!   ACPI PM timer (0x608), IDE/ATA PIO disk (0x1f0-0x1f7, 0x3f6), exit port (0x501),
//!   a null port (0x80), and with `--net tap:NAME` an RTL8139-compatible NIC (0xc000-0xc0ff,
//!   IRQ 5) on a TAP device ([`net::tap`]).
//! - The batched port-I/O hypercall: [`hypercall`] documents the queue format.
//! - `--pit-hz`: [`devices::pit`] documents the transparent rescaling.
//!
//! ## For profilers
//!
//! - The vCPU runs on a thread named `vcpu0`.
//! - Guest RAM is one region at guest-physical 0 ([`abi`] has the layout). The guest ELF
//!   is loaded at its link addresses and runs identity-mapped, so a guest RIP symbolizes
//!   directly against `tinyvmm guest-elf -o FILE`.
//! - `--stats-json FILE` writes tinyvmm's own counts (exits by kind and by port,
//!   hypercalls, timer, IDE, the guest's report): the document is
//!   `tinyvmm_abi::stats::RunStats` (crate `vmm/abi`, feature `stats`), which consumers
//!   deserialize directly.
//! - `--memory-map FILE` writes, before the vCPU starts,
//!   `{"pid":N,"regions":[{"guest_phys":"0x0","size":N,"host_virt":"0x7f..."}]}`:
//!   guest-physical `g` inside a region is at `host_virt + (g - guest_phys)` in
//!   `/proc/PID/mem`.
//! - In the guest, port helpers (`outb`, `inb`, ...) are `#[inline(always)]`: the `in`/
//!   `out` instructions sit in their callers, e.g. `ide_do_rw_disk`, whose caller is
//!   `disk_write_workload` or `disk_read_workload` (frame pointers are on). Sector data
//!   moves in `ide_output_data`/`ide_input_data` (`rep outsw`/`rep insw`), a batch doorbell
//!   in `pio_batch`, EOIs in `ack_irq`, called from `timer_interrupt`.
//!
//! ## Exact exits of the disk workloads
//!
//! N sectors, one 48-bit command per sector, `--skip-pmtmr-calibration` (the calibration
//! loop's exits depend on time). Unbatched, per sector: 0x1f1-0x1f5 two OUTs each,
//! 0x1f6 one, 0x1f7 four (ready, command, DRQ, done); the data port 0x1f0 256 for a
//! write (KVM's instruction emulator exits once per word of `rep outsw`) and one for a
//! read (it merges `rep insw` up to a page into one exit). Batched, per sector: one
//! doorbell (0x510) carrying the 14 register accesses (ready, 11 task-file writes,
//! command, DRQ), then the data exits and 0x1f7 one (done). Once per run: 0x3f6 one
//! (nIEN), IDENTIFY (0x1f6 one, 0x1f7 two, 0x1f0 one), for disk-write FLUSH CACHE EXT
//! (0x1f6 one, 0x1f7 two); the PM timer (0x608) 2 + N/128 times. So ports 0x1f1-0x1f7
//! see 15N+6 exits unbatched vs N+6 batched for disk-write (15N+3 vs N+3 for
//! disk-read): -93% at N = 1000. Boot adds 0x20 one, 0x21 four, 0x40 two, 0x43 one, and
//! the exit port 0x501 one; the console (0x3f8) one per character.
//!
//! ## The timer-disk workload (Fig. 7)
//!
//! `--workload timer-disk` is disk-write (same pattern, same `ide_do_rw_disk`, batched
//! with `--batch-pio` or not, same FLUSH) with IRQ0 unmasked and interrupts enabled over
//! the I/O phase, at the guest-programmed 1000 Hz (or whatever `--pit-hz` delivers). The
//! disk is still polled, so every IDE and PM-timer count above holds unchanged. On top:
//! 0x21 two (unmask IRQ0 before the loop, mask it after), 0x20 one EOI per tick (in
//! `ack_irq`, called from `timer_interrupt`), and one interrupt-window exit per tick that
//! fell due while IF was clear (inside the ISR, or after the final `cli`; a few per
//! second). The guest reports the ticks it took during the I/O phase and its sectors/s
//! by its PM timer over that phase.

//!
//! ## The network workloads (`net-echo`, `net-rx`, `net-tx`, `net-hostile`)
//!
//! With `--net tap:NAME` the guest drives the NIC (`vmm/guest/src/net/rtl8139.rs`) under
//! smoltcp; its accessors `ioread8/16/32` and `iowrite8/16/32` are real functions (each
//! NIC exit's RIP is in one of them, its caller is the driver function). Per received
//! packet in `--nic-mode irq`: one interrupt, `ioread16(ISR)` and `iowrite16(ISR)` in
//! `rtl8139_interrupt`, `iowrite16(CAPR)` in `rtl8139_rx_one`, the EOI (`ack_irq`, port
//! 0x20) called from `rtl8139_interrupt`. In `napi` mode one interrupt (ISR read, IMR mask,
//! EOI) starts `rtl8139_poll`, which per packet reads CR (`ioread8`) and writes CAPR, and at
//! the end acks ISR, reads CR once more and unmasks IMR. Per transmitted frame:
//! `ioread32(TSD)` and `iowrite32(TSD)`. The workloads keep IRQ0 at the PIT's slowest rate
//! (18.2 Hz) for their timeouts, and a halted guest is not re-entered until an interrupt is
//! due. [`net::lab`] builds the test network, [`net::peer`] talks to the guest.
//!
//! ## The same guest under QEMU
//!
//! The guest ELF carries a PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`), so
//! `qemu-system-x86_64 -enable-kvm -kernel guest.elf -append "workload=disk-write count=100"`
//! boots it (32-bit entry, its own identity page tables, long mode) and it runs the same
//! workloads on QEMU's PIIX IDE, PIT, PIC, ACPI PM timer (port from the FADT) and 16550,
//! ending through `-device isa-debug-exit,iobase=0xf4,iosize=0x04` (status `(s << 1) | 1`).
//! The command line takes tinyvmm's `run` flags without dashes (`vmm/guest/src/cmdline.rs`);
//! `batch-pio` finds tinyvmm's doorbell absent and falls back to plain port I/O, saying so.
//! tinyvmm's own boot (64-bit entry at `_start`, `BootParams`) is unchanged.
//!
//! ## Limitations
//!
//! - IRQ0 is injected at the next exit after it is due (a halted guest is woken on time);
//!   there is no signal kick for a guest that computes for long stretches without exits.
//!   Periods that pass while the VMM is late are dropped and counted
//!   (`timer.irq0_missed_periods`), never delivered as extra ticks.

pub mod abi;
pub mod boot;
pub mod bus;
pub mod devices;
pub mod fuzz;
pub mod hypercall;
pub mod net;
pub mod stats;
pub mod vcpu;
pub mod vm;

pub use vcpu::Outcome;
pub use vm::{run, RunReport, VmConfig};

/// The bundled guest kernel (an ELF with symbols and DWARF), built by `build.rs`.
pub const GUEST_ELF: &[u8] = include_bytes!(env!("TINYVMM_GUEST_ELF"));

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{0}")]
    Config(String),
    #[error("bad guest image: {0}")]
    BadGuest(String),
    #[error("disk image {0}")]
    Disk(String),
    #[error("{0}")]
    Kvm(String),
}

/// What the bundled guest runs (`tinyvmm run --workload NAME`; the doc comments are its help).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Write COUNT sectors of a deterministic pattern from LBA 0, then FLUSH CACHE.
    DiskWrite,
    /// Read COUNT sectors from LBA 0 and checksum them.
    DiskRead,
    /// Halt with the timer on for SECONDS, counting ticks.
    Timer,
    /// COUNT `out`s to the null port 0x80 (the exit-cost benchmark).
    PioLoop,
    /// Misbehave on purpose (bad hypercall queues, unknown ports, bad LBAs, arbitrary IDE
    /// register accesses), then check the disk still works: the disk-write pattern is
    /// written to LBAs 5 and 6 (trapped, then batched) and read back. Needs --disk (7+
    /// sectors).
    Hostile,
    /// Execute ud2 with no exception handlers.
    TripleFault,
    /// disk-write with the guest timer on during the I/O: IRQ0 unmasked, interrupts
    /// enabled, at the programmed 1000 Hz (or what --pit-hz delivers); reports ticks and
    /// sectors/s measured by the guest's PM timer. Needs --disk.
    TimerDisk,
    /// Reliability: a random stream (seed: COUNT) of port accesses to every device and to
    /// unclaimed ports, batch hypercalls with random queues (many malformed), and random IDE
    /// commands, for SECONDS of the guest's PM timer; the guest reports its own counts of
    /// every access, per port, to compare with --stats-json. Needs --disk (a scratch image:
    /// it is written at random).
    Chaos,
    /// Network: answer ping and UDP echo (port 7) for SECONDS (default 10). Needs --net.
    NetEcho,
    /// Network: receive COUNT datagrams of the stream format on UDP port 9000, checking
    /// each one's sequence number and checksum; ends early after SECONDS (default 10)
    /// without a datagram. Needs --net.
    NetRx,
    /// Network: send COUNT datagrams of --size bytes to HostA 198.18.0.1:9000. Needs --net.
    NetTx,
    /// Network: accept one TCP connection on port 9001 and read it to its end, checking
    /// every byte of the stream pattern; gives up after SECONDS (default 10) without data.
    /// Needs --net.
    NetTcpRx,
    /// Network: misprogram the NIC (descriptors and a ring outside RAM, oversized frames,
    /// a ring that overflows), then check a frame still goes out and one comes in (it
    /// pings the gateway). Needs --net.
    NetHostile,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::DiskWrite => "disk-write",
            Workload::DiskRead => "disk-read",
            Workload::Timer => "timer",
            Workload::PioLoop => "pio-loop",
            Workload::Hostile => "hostile",
            Workload::TripleFault => "triple-fault",
            Workload::TimerDisk => "timer-disk",
            Workload::Chaos => "chaos",
            Workload::NetEcho => "net-echo",
            Workload::NetRx => "net-rx",
            Workload::NetTx => "net-tx",
            Workload::NetHostile => "net-hostile",
            Workload::NetTcpRx => "net-tcp-rx",
        }
    }

    pub fn abi(self) -> u32 {
        match self {
            Workload::DiskWrite => abi::WL_DISK_WRITE,
            Workload::DiskRead => abi::WL_DISK_READ,
            Workload::Timer => abi::WL_TIMER,
            Workload::PioLoop => abi::WL_PIO_LOOP,
            Workload::Hostile => abi::WL_HOSTILE,
            Workload::TripleFault => abi::WL_TRIPLE_FAULT,
            Workload::TimerDisk => abi::WL_TIMER_DISK,
            Workload::Chaos => abi::WL_CHAOS,
            Workload::NetEcho => abi::WL_NET_ECHO,
            Workload::NetRx => abi::WL_NET_RX,
            Workload::NetTx => abi::WL_NET_TX,
            Workload::NetHostile => abi::WL_NET_HOSTILE,
            Workload::NetTcpRx => abi::WL_NET_TCP_RX,
        }
    }

    /// The network workloads need a NIC (`--net tap:NAME`).
    pub fn needs_net(self) -> bool {
        matches!(self, Workload::NetEcho | Workload::NetRx | Workload::NetTx | Workload::NetHostile | Workload::NetTcpRx)
    }

    pub fn needs_disk(self) -> bool {
        matches!(self, Workload::DiskWrite | Workload::DiskRead | Workload::Hostile | Workload::TimerDisk | Workload::Chaos)
    }
}
