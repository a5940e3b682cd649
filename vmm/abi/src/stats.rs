//! The document `tinyvmm run --stats-json FILE` writes, as types (feature `stats`).
//!
//! tinyvmm builds its file from [`RunStats`] with one `serde_json::to_writer_pretty`, and a
//! consumer reads it back into the same type:
//!
//! ```
//! # use tinyvmm_abi::stats::RunStats;
//! # let text = r#"{"name":null,"workload":"timer","count":1000,"seconds":0,"batch_pio":false,
//! #   "pit_hz":null,"pmtmr_calibration":false,"outcome":"guest-exit",
//! #   "outcome_detail":"guest exited with status 0","guest_exit_status":0,
//! #   "guest_entry":"0x100000","run_ns":1,"exits_total":2,
//! #   "by_kind":{"io":2,"hlt":0,"mmio":0,"irq_window":0,"shutdown":0,"intr":0,"other":0},
//! #   "by_port":{"0x20":1,"0x501":1},"hypercalls":0,"hypercall_entries":0,
//! #   "hypercall_errors":{"address":0,"count":0,"entry":0},"replayed_by_port":{},
//! #   "interrupts_injected":0,"timer":{"programmed_hz":0.0,"delivered_hz":null,
//! #   "irq0_edges":0,"irq0_missed_periods":0,"pic_coalesced":0,"eoi_writes":0},
//! #   "unclaimed_port_accesses":0,"ide":null,"guest":null}"#;
//! let stats: RunStats = serde_json::from_str(text)?;
//! assert_eq!(stats.port_exits(0x20), 1); // "0x20": 1 in the file
//! assert_eq!(stats.port_exits(0x1f0), 0); // ports without exits are not listed
//! assert!(stats.ide.is_none()); // no --disk: "ide": null
//! # Ok::<(), serde_json::Error>(())
//! ```
//!
//! ## The JSON shape
//!
//! Field names and nesting are exactly the struct fields below. Value types:
//!
//! - counts are JSON numbers (`u64`);
//! - port maps ([`PortCounts`]) are JSON objects keyed by the port in lower-case hex with a
//!   `0x` prefix (`{"0x1f0": 769, "0x20": 1}`), typed `BTreeMap<u16, u64>` here; only
//!   ports with at least one access are listed, so a missing port means 0;
//! - addresses (`guest_entry`) are hex strings (`"0x100000"`), typed `u64` here; the
//!   guest's checksum is a 16-digit hex string (`"0x54be1ef50fc4fc25"`), typed `u64`;
//! - a field that can be JSON `null` or missing is an `Option`: `None` is "not
//!   applicable / not known", never 0. The top-level `Option`s are always written (as
//!   `null` when `None`); the guest report's are omitted when `None`, as the guest omits
//!   them.
//!
//! Every struct is `#[serde(deny_unknown_fields)]`: a field written but not declared here
//! fails to parse, so this module and the writer cannot drift apart silently.

use alloc::collections::BTreeMap;
use alloc::string::String;
use serde::{Deserialize, Serialize};

/// Accesses per I/O port. In JSON: `{"0x1f0": 769, ...}` (see the module docs).
pub type PortCounts = BTreeMap<u16, u64>;

/// Everything tinyvmm knows about one run: the `--stats-json` file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunStats {
    /// `--name`: a label copied from the command line; `None` (`null`) without one.
    pub name: Option<String>,
    /// `--workload`, as spelled on the command line (`disk-write`, `timer-disk`, ...).
    pub workload: String,
    /// `--count`: sectors for the disk workloads, iterations for `pio-loop` (passed to the
    /// guest whether the workload uses it or not).
    pub count: u64,
    /// `--seconds`: duration of the `timer` workload (passed to the guest either way).
    pub seconds: u64,
    /// `--batch-pio`: the guest merged each IDE command's register accesses into one
    /// doorbell hypercall.
    pub batch_pio: bool,
    /// `--pit-hz`: the IRQ0 rate delivered instead of the programmed one; `None` (`null`)
    /// when IRQ0 follows what the guest programmed.
    pub pit_hz: Option<u32>,
    /// False with `--skip-pmtmr-calibration` (the guest skipped `verify_pmtmr_rate`).
    pub pmtmr_calibration: bool,
    /// How the run ended.
    pub outcome: RunOutcome,
    /// The outcome in words, e.g. "guest exited with status 0" or "guest triple fault
    /// (KVM_EXIT_SHUTDOWN) at rip 0x1011e1".
    pub outcome_detail: String,
    /// The byte the guest wrote to the exit port 0x501 (0 = success); `None` (`null`)
    /// when the run ended otherwise ([`RunOutcome::GuestExit`] is the only outcome with it).
    pub guest_exit_status: Option<u8>,
    /// Guest-physical (= guest-virtual) entry point of the guest ELF. JSON: `"0x100000"`.
    #[serde(with = "hex_u64")]
    pub guest_entry: u64,
    /// Wall time from starting the vCPU thread to its end, in nanoseconds.
    pub run_ns: u64,
    /// Every return from `KVM_RUN`, of any kind (the sum of [`ExitsByKind`]).
    pub exits_total: u64,
    /// Exits by kind.
    pub by_kind: ExitsByKind,
    /// Port-I/O exits per port, `in` and `out` together; a string instruction
    /// (`rep outsw`) counts once per exit KVM made for it, not per element. Includes the
    /// doorbell (0x510), one per hypercall.
    #[serde(with = "hex_port_map")]
    pub by_port: PortCounts,
    /// Doorbell hypercalls (writes to port 0x510), valid or not.
    pub hypercalls: u64,
    /// Port accesses replayed from valid batch queues (they made no exit of their own).
    pub hypercall_entries: u64,
    /// Hypercalls refused, by error code.
    pub hypercall_errors: HypercallErrors,
    /// Port accesses replayed from batches, per port (sums to `hypercall_entries`).
    #[serde(with = "hex_port_map")]
    pub replayed_by_port: PortCounts,
    /// Interrupts injected into the guest with `KVM_INTERRUPT` (IRQ0 through the PIC).
    pub interrupts_injected: u64,
    /// The PIT and the PIC.
    pub timer: TimerStats,
    /// Accesses (trapped or replayed) to ports no device claims, answered with all ones.
    pub unclaimed_port_accesses: u64,
    /// The IDE disk's counters; `None` (`null`) when the run had no `--disk`.
    pub ide: Option<IdeStats>,
    /// The NIC's counters; `None` (`null`, or absent in files from before the NIC) when the
    /// run had no `--net`.
    #[serde(default)]
    pub nic: Option<NicStats>,
    /// The guest's own `@@result {json}` report (the last one it printed); `None`
    /// (`null`) when it printed none (e.g. a triple fault).
    pub guest: Option<GuestReport>,
}

impl RunStats {
    /// Exits on `port` (`by_port`), 0 if it has none.
    pub fn port_exits(&self, port: u16) -> u64 {
        self.by_port.get(&port).copied().unwrap_or(0)
    }

    /// Accesses to `port` replayed from batches (`replayed_by_port`), 0 if none.
    pub fn replayed(&self, port: u16) -> u64 {
        self.replayed_by_port.get(&port).copied().unwrap_or(0)
    }
}

impl GuestReport {
    /// A network workload's stream counts (`datagrams`, `bytes`, `bad_seq`,
    /// `bad_checksum`), or `None` if this is not a network workload's report.
    pub fn net_stream(&self) -> Option<crate::net::StreamCheck> {
        Some(crate::net::StreamCheck {
            datagrams: self.datagrams?,
            bytes: self.bytes?,
            bad_seq: self.bad_seq?,
            bad_checksum: self.bad_checksum?,
            next_seq: 0,
        })
    }
}

/// How a run ended. JSON: `"guest-exit"`, `"triple-fault"`, `"halted-forever"`,
/// `"kvm-failure"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunOutcome {
    /// The guest wrote its exit status to port 0x501 (see `guest_exit_status`).
    #[default]
    GuestExit,
    /// `KVM_EXIT_SHUTDOWN`: a triple fault.
    TripleFault,
    /// The guest halted with interrupts off, or with no interrupt source that could wake it.
    HaltedForever,
    /// KVM could not run or emulate the guest (internal error, failed entry, ...).
    KvmFailure,
}

impl RunOutcome {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::GuestExit => "guest-exit",
            RunOutcome::TripleFault => "triple-fault",
            RunOutcome::HaltedForever => "halted-forever",
            RunOutcome::KvmFailure => "kvm-failure",
        }
    }
}

/// Exits by kind (`KVM_EXIT_*`); they sum to `exits_total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitsByKind {
    /// `KVM_EXIT_IO`: port I/O (`by_port` has them per port).
    pub io: u64,
    /// `KVM_EXIT_HLT`: the guest executed `hlt`.
    pub hlt: u64,
    /// `KVM_EXIT_MMIO`: accesses to guest-physical addresses outside RAM.
    pub mmio: u64,
    /// `KVM_EXIT_IRQ_WINDOW_OPEN`: the guest became able to take a pending interrupt.
    pub irq_window: u64,
    /// `KVM_EXIT_SHUTDOWN` (a triple fault; ends the run).
    pub shutdown: u64,
    /// `KVM_EXIT_INTR`, and `KVM_RUN` returning `EINTR`/`EAGAIN`: a signal interrupted it.
    pub intr: u64,
    /// Any other exit (internal error, failed entry, ...; each ends the run).
    pub other: u64,
}

/// Doorbell hypercalls refused, by the status code returned to the guest; a refused
/// queue replays nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HypercallErrors {
    /// Status 1 (`BATCH_ERR_ADDRESS`): the queue was not wholly inside guest RAM.
    pub address: u64,
    /// Status 2 (`BATCH_ERR_COUNT`): more than `BATCH_MAX` entries.
    pub count: u64,
    /// Status 3 (`BATCH_ERR_ENTRY`): an entry had an unknown op, a bad size, or targeted
    /// the doorbell.
    pub entry: u64,
}

/// The PIT (IRQ0's source) and the PIC (its delivery).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerStats {
    /// The rate the guest programmed on PIT channel 0, in Hz (1193182 / reload, e.g.
    /// 1000.152 for a reload of 1193); 0.0 if channel 0 is not counting periodically.
    pub programmed_hz: f64,
    /// `--pit-hz`: the rate IRQ0 was delivered at instead; `None` (`null`) when it was
    /// delivered at `programmed_hz`.
    pub delivered_hz: Option<u32>,
    /// IRQ0 edges the PIT raised (delivered to the PIC, whether or not they were taken).
    pub irq0_edges: u64,
    /// IRQ0 periods that passed while the VMM was late (dropped, never delivered as extra
    /// ticks).
    pub irq0_missed_periods: u64,
    /// IRQ0 edges merged into one still pending on the PIC (the guest had IRQ0 masked,
    /// interrupts off, or was still in its ISR).
    pub pic_coalesced: u64,
    /// EOI commands written to the master PIC (port 0x20), specific or not.
    pub eoi_writes: u64,
}

/// The IDE disk's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdeStats {
    /// Commands written to the command register (0x1f7) for the master drive, accepted or
    /// not.
    pub commands: u64,
    /// Sectors read from the image (each sector of a READ, once).
    pub sectors_read: u64,
    /// Sectors written to the image (each when its 512th byte arrived).
    pub sectors_written: u64,
    /// FLUSH CACHE (EXT) commands that `fsync`ed the image.
    pub flushes: u64,
    /// Commands that ended with ERR (ABRT, IDNF or UNC).
    pub errors: u64,
}

/// The NIC's counters (`--net`): what it moved, what it refused, and every register access.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicStats {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames dropped because the receive ring had no room (the guest sees ISR.RXOVW).
    pub rx_dropped_ring_full: u64,
    /// Frames dropped because receiving was off or no ring was set.
    pub rx_dropped_disabled: u64,
    /// Frames dropped for being longer than an Ethernet frame (1514 bytes).
    pub rx_dropped_oversized: u64,
    /// Transmits refused: size 0 or over 1514 bytes, or the backend failed.
    pub tx_errors: u64,
    /// DMA addresses (transmit descriptors, the receive ring) outside guest RAM.
    pub dma_errors: u64,
    /// Writes the NIC ignored (read-only registers, reserved command bits).
    pub ignored_writes: u64,
    /// Rising edges of the NIC's interrupt line.
    pub interrupts: u64,
    /// Accesses per register, by offset from the I/O base, in offset order.
    pub registers: alloc::vec::Vec<NicRegisterAccesses>,
}

/// One NIC register's accesses (trapped ones: each is one exit).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicRegisterAccesses {
    /// Offset from the I/O base, e.g. 0x3e for ISR.
    pub offset: u16,
    pub reads: u64,
    pub writes: u64,
}

/// The guest's `@@result {json}` report. One flat object; which fields a report has
/// depends on the workload (each is documented with the workloads that write it), and a
/// field the guest did not write is `None` and is omitted again when written out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestReport {
    /// The result line as printed, when tinyvmm could not parse it as a report of this
    /// shape (e.g. from a `--guest` ELF that reports other fields). Only field set then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unparsed: Option<String>,
    /// The workload the guest ran (`disk-write`, `disk-read`, `timer-disk`, `timer`,
    /// `pio-loop`, `hostile`); absent in an early error report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// `"ok"` or `"error"` (every report of the bundled guest has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// With `status` `"error"`: what failed: `"ide"` (see `ide_stage`), `"bad boot params"`,
    /// `"guest panic"`, `"unknown workload N"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,

    // Disk workloads: disk-write, disk-read, timer-disk.
    /// Disk workloads: sectors transferred successfully (`requested` unless an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sectors: Option<u64>,
    /// Disk workloads: sectors asked for (`--count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<u64>,
    /// Disk workloads: whether the guest batched its IDE register accesses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batched: Option<bool>,
    /// Disk workloads: FNV-1a over the transferred data as little-endian u64 words, in LBA
    /// order. JSON: a 16-digit hex string, `"0x54be1ef50fc4fc25"`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_u64_16_opt")]
    pub checksum: Option<u64>,
    /// Disk workloads: sectors per second of the guest's PM timer over the I/O phase
    /// (integer, rounded down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sectors_per_sec: Option<u64>,
    /// Disk workloads and hostile: the disk's capacity in sectors, from IDENTIFY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_sectors: Option<u64>,
    /// PM-timer ticks (3.579545 MHz) the guest timed: the I/O phase (disk workloads), the
    /// halt loop (timer), the `out` loop (pio-loop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pm_ticks: Option<u64>,
    /// After an IDE error: where it failed (1 ready wait, 2 DRQ wait, 3 completion, as the
    /// guest numbers its stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ide_stage: Option<u8>,
    /// After an IDE error: the status register (0x1f7) the guest read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ide_status: Option<u8>,
    /// After an IDE error: the error register (0x1f1) the guest read (0x10 IDNF, 0x04 ABRT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ide_error: Option<u8>,

    // Timer workloads: timer, timer-disk.
    /// Timer workloads: the IRQ0 rate the guest programmed on the PIT (1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programmed_hz: Option<u64>,
    /// Timer workloads: timer interrupts the guest took (during the I/O phase for
    /// timer-disk, the halt loop for timer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticks: Option<u64>,
    /// Timer workloads: `ticks` per second of `pm_ticks` (integer, rounded down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticks_per_sec: Option<u64>,
    /// timer: the duration asked for (`--seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
    /// pio-loop: the `out`s to port 0x80 asked for (`--count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,

    // Boot-time PM-timer calibration (every workload but hostile).
    /// Whether the guest ran `verify_pmtmr_rate` (false with `--skip-pmtmr-calibration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmtmr_calibrated: Option<bool>,
    /// Calibration: the PM timer's delta was within 5% of `pmtmr_expected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmtmr_ok: Option<bool>,
    /// Calibration: PM-timer ticks over the ~50 ms measured on PIT channel 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmtmr_delta: Option<u64>,
    /// Calibration: the PM-timer ticks that PIT interval should take at 3.579545 MHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmtmr_expected: Option<u64>,
    /// Calibration: loop iterations, each one PIT latch (0x43), two channel-2 reads (0x42)
    /// and one PM-timer read (0x608).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmtmr_reads: Option<u64>,

    // hostile: the doorbell status (0 ok, 1 address, 2 count, 3 entry) of each bad queue.
    /// hostile: status of a queue placed past the end of RAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_outside_ram: Option<u32>,
    /// hostile: status of a queue straddling the end of RAM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_straddles_ram_end: Option<u32>,
    /// hostile: status of a queue whose address + length wraps past 2^64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_address_wraps: Option<u32>,
    /// hostile: status of a queue of `BATCH_MAX` + 1 entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_count_over_limit: Option<u32>,
    /// hostile: status of a queue of `u32::MAX` entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_count_huge: Option<u32>,
    /// hostile: status of a queue with an unknown op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_bad_op: Option<u32>,
    /// hostile: status of a queue with a 3-byte access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_bad_size: Option<u32>,
    /// hostile: status of a queue that targets the doorbell itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_nested_doorbell: Option<u32>,
    /// hostile: status of a queue reading an unclaimed port (valid: 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_unknown_port: Option<u32>,
    /// hostile: the value that batched read of an unclaimed port returned (0xff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_unknown_port_value: Option<u32>,
    /// hostile: status of an empty queue (0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_empty: Option<u32>,
    /// hostile: a trapped 8-bit `in` from an unclaimed port (0xff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_in8: Option<u8>,
    /// hostile: a trapped 16-bit `in` from an unclaimed port (0xffff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_in16: Option<u16>,
    /// hostile: a trapped 32-bit `in` from an unclaimed port (0xffffffff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_in32: Option<u32>,
    /// hostile: `status << 8 | error` after a 48-bit READ past the end of the disk
    /// (0x5110: DRDY|DSC|ERR, IDNF); 0 if the command succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lba48_read_out_of_range: Option<u32>,
    /// hostile: the same for a 48-bit WRITE at LBA 2^47.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lba48_write_out_of_range: Option<u32>,
    /// hostile: the same for a 28-bit READ SECTORS at LBA 0x0fffffff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lba28_read_out_of_range: Option<u32>,
    /// hostile: a valid one-sector read succeeded after those errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ide_recovered: Option<bool>,
    /// hostile: `status << 8 | error` after an unknown IDE command (0x5104: ERR, ABRT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ide_unknown_command: Option<u32>,
    /// hostile: after 3000 arbitrary trapped accesses to the IDE registers (no write
    /// commands), a reset and one sector of the disk-write pattern written to LBA 5 and
    /// read back: 0 if both succeeded, else `phase << 16 | status << 8 | error` of the
    /// first failure (phase 1 write, 2 read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ide_garbage_recovery: Option<u32>,
    /// hostile: FNV-1a (as `checksum`) of that sector as read back; 0 if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_u64_16_opt")]
    pub ide_garbage_readback: Option<u64>,
    /// hostile: the same through batched register accesses (after every malformed queue),
    /// LBA 6: 0 if the write and the read back succeeded, else as `ide_garbage_recovery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_recovery: Option<u32>,
    /// hostile: FNV-1a of the LBA 6 sector as read back through batches; 0 if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_u64_16_opt")]
    pub batch_readback: Option<u64>,

    // Network workloads (net-echo, net-rx, net-tx, net-hostile): `crate::net::NetResult`
    // prints these; `requested` and `pm_ticks` are shared with the disk workloads.
    /// Network workloads: the driver's receive mode, `"irq"` or `"napi"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_mode: Option<String>,
    /// Network workloads: the guest's IPv4 address, dotted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ip: Option<String>,
    /// net-tx: datagram size asked for (`--size`); 0 for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// net-rx: datagrams received on the stream port; net-tx: sent; net-echo: UDP echoes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datagrams: Option<u64>,
    /// Their UDP payload bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// net-rx: datagrams out of sequence (see `crate::net::StreamCheck`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_seq: Option<u64>,
    /// net-rx: datagrams whose checksum, magic or length was wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_checksum: Option<u64>,
    /// net-rx: stopped on its idle timeout before `requested` datagrams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<bool>,
    /// net-echo: ICMP echo requests to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_requests: Option<u64>,
    /// Network workloads: frames the driver took from the receive ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_frames: Option<u64>,
    /// Network workloads: frames the driver took from the ring and dropped because the
    /// stack was behind (its software queue was full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_queue_drops: Option<u64>,
    /// Network workloads: frames the driver handed to the NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_frames: Option<u64>,
    /// Network workloads: NIC interrupts the guest took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_interrupts: Option<u64>,
    /// Network workloads: NAPI polls (0 in irq mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub napi_polls: Option<u64>,
    /// net-hostile: the NIC status bits its misprogramming raised, ORed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostile_isr: Option<u16>,
    /// net-hostile: a frame went out and one came in after the misprogramming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostile_recovered: Option<bool>,

    // chaos (vmm/guest/src/chaos.rs): the guest's own counts of what it did.
    /// chaos: the seed (`--count`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos_seed: Option<u64>,
    /// chaos: operations run (a port access, a doorbell, or an IDE command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos_ops: Option<u64>,
    /// chaos: doorbells (port 0x510) by the status returned: [ok, address, count, entry].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos_doorbells: Option<[u64; 4]>,
    /// chaos: entries of the accepted queues (all replayed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos_entries: Option<u64>,
    /// chaos: accesses to unclaimed ports, trapped and replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos_unclaimed: Option<u64>,
    /// chaos: doorbells whose status differed from what the hypercall's rules give (0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos_mismatches: Option<u64>,
    /// chaos: IDE commands issued (writes of a command byte after a task file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos_ide_commands: Option<u64>,
    /// chaos: trapped accesses (one exit each) per port, the PM-timer reads that time the
    /// run included; not the doorbells, the console or the exit port.
    #[serde(default, skip_serializing_if = "PortCounts::is_empty", with = "hex_port_map")]
    pub chaos_trapped: PortCounts,
    /// chaos: accesses replayed from accepted queues, per port.
    #[serde(default, skip_serializing_if = "PortCounts::is_empty", with = "hex_port_map")]
    pub chaos_replayed: PortCounts,
}

/// `u64` as a `0x`-prefixed lower-case hex string (`"0x100000"`); parsing takes any
/// `0x`/`0X`-prefixed hex.
pub mod hex_u64 {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{v:#x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_str(super::HexVisitor)
    }
}

/// `Option<u64>` as a `0x`-prefixed, 16-digit, lower-case hex string
/// (`"0x54be1ef50fc4fc25"`), for an optional field that is omitted when `None`.
pub mod hex_u64_16_opt {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(&format_args!("{v:#018x}")),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_str(super::HexVisitor).map(Some)
    }
}

/// A [`PortCounts`] as a JSON object keyed by `"0x1f0"`-style hex strings. Parsing
/// rejects keys that are not a `0x`-prefixed hex `u16`, and two keys naming one port.
pub mod hex_port_map {
    use super::PortCounts;
    use core::fmt;
    use serde::de::{self, MapAccess, Visitor};
    use serde::ser::Serialize;
    use serde::{Deserializer, Serializer};

    /// A port as a map key: `0x1f0`.
    struct Key(u16);

    impl Serialize for Key {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&format_args!("{:#x}", self.0))
        }
    }

    pub fn serialize<S: Serializer>(m: &PortCounts, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(&p, n)| (Key(p), n)))
    }

    struct PortMapVisitor;

    impl<'de> Visitor<'de> for PortMapVisitor {
        type Value = PortCounts;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of counts keyed by \"0x\"-prefixed hex port numbers")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PortCounts, A::Error> {
            let mut out = PortCounts::new();
            while let Some((key, n)) = map.next_entry::<alloc::borrow::Cow<'de, str>, u64>()? {
                let port = super::parse_hex(&key)
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| de::Error::invalid_value(de::Unexpected::Str(&key), &"a 0x-prefixed hex port (0x0-0xffff)"))?;
                if out.insert(port, n).is_some() {
                    return Err(de::Error::custom(format_args!("port {port:#x} is listed twice")));
                }
            }
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PortCounts, D::Error> {
        d.deserialize_map(PortMapVisitor)
    }
}

/// A `0x`-prefixed hex string as a `u64` (from any deserializer, borrowed or not).
struct HexVisitor;

impl serde::de::Visitor<'_> for HexVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a 0x-prefixed hex number")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<u64, E> {
        parse_hex(s).ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(s), &self))
    }
}

/// `0x1f0` / `0X1F0` -> 0x1f0; `None` without the prefix, with no digits, a sign, or on
/// overflow.
fn parse_hex(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The guest prints `NetResult`; tinyvmm reads the line as a `GuestReport`: every field
    /// the guest writes is declared, and the counts come back.
    #[test]
    fn the_guests_network_result_line_parses_as_a_report() {
        use crate::net::{NetResult, NicMode, StreamCheck};
        for workload in ["net-rx", "net-hostile"] {
            let r = NetResult {
                workload,
                ok: true,
                nic_mode: NicMode::Napi,
                guest_ip: [198, 18, 1, 2],
                requested: 500,
                size: 64,
                stream: StreamCheck { datagrams: 499, bytes: 31936, bad_seq: 1, bad_checksum: 2, next_seq: 7 },
                timed_out: true,
                echo_requests: 3,
                rx_frames: 510,
                rx_queue_drops: 6,
                tx_frames: 4,
                rx_interrupts: 90,
                napi_polls: 95,
                pm_ticks: 123456,
                hostile_isr: 0x8018,
                hostile_recovered: true,
            };
            let line = r.to_string();
            let g: GuestReport = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(g.nic_mode.as_deref(), Some("napi"));
            assert_eq!(g.guest_ip.as_deref(), Some("198.18.1.2"));
            assert_eq!((g.requested, g.size, g.timed_out, g.echo_requests), (Some(500), Some(64), Some(true), Some(3)));
            assert_eq!((g.rx_frames, g.rx_queue_drops, g.tx_frames, g.rx_interrupts, g.napi_polls, g.pm_ticks), (Some(510), Some(6), Some(4), Some(90), Some(95), Some(123456)));
            assert_eq!(g.net_stream(), Some(StreamCheck { next_seq: 0, ..r.stream }));
            let hostile = workload == "net-hostile";
            assert_eq!((g.hostile_isr.is_some(), g.hostile_recovered.is_some()), (hostile, hostile));
            assert_eq!(serde_json::to_value(&g).unwrap(), serde_json::from_str::<Value>(&line).unwrap());
        }
    }

    /// A document as tinyvmm wrote it (a 3-sector disk-write, trimmed by hand).
    fn sample() -> Value {
        json!({
            "name": "lbl", "workload": "disk-write", "count": 3, "seconds": 1, "batch_pio": true,
            "pit_hz": null, "pmtmr_calibration": false, "outcome": "guest-exit",
            "outcome_detail": "guest exited with status 0", "guest_exit_status": 0,
            "guest_entry": "0x100000", "run_ns": 40124668, "exits_total": 997,
            "by_kind": {"io": 997, "hlt": 0, "mmio": 0, "irq_window": 0, "shutdown": 0, "intr": 0, "other": 0},
            "by_port": {"0x1f0": 769, "0x20": 1, "0x510": 3, "0xffff": 7},
            "hypercalls": 3, "hypercall_entries": 42,
            "hypercall_errors": {"address": 0, "count": 0, "entry": 0},
            "replayed_by_port": {"0x1f7": 9},
            "interrupts_injected": 0,
            "timer": {"programmed_hz": 1000.152, "delivered_hz": null, "irq0_edges": 16,
                      "irq0_missed_periods": 20, "pic_coalesced": 15, "eoi_writes": 0},
            "unclaimed_port_accesses": 0,
            "ide": {"commands": 5, "sectors_read": 0, "sectors_written": 3, "flushes": 1, "errors": 0},
            "nic": null,
            "guest": {"workload": "disk-write", "status": "ok", "sectors": 3, "requested": 3, "batched": true,
                      "checksum": "0x04be1ef50fc4fc25", "pm_ticks": 82730, "sectors_per_sec": 129,
                      "disk_sectors": 64, "pmtmr_calibrated": false},
        })
    }

    #[test]
    fn parses_typed_and_writes_back_the_same_json() {
        let s: RunStats = serde_json::from_value(sample()).unwrap();
        assert_eq!(s.name.as_deref(), Some("lbl"));
        assert_eq!(s.pit_hz, None);
        assert_eq!(s.outcome, RunOutcome::GuestExit);
        assert_eq!(s.guest_exit_status, Some(0));
        assert_eq!(s.guest_entry, 0x10_0000);
        assert_eq!(s.port_exits(0x1f0), 769);
        assert_eq!(s.port_exits(0x20), 1);
        assert_eq!(s.port_exits(0xffff), 7);
        assert_eq!(s.port_exits(0x1f1), 0);
        assert_eq!(s.replayed(0x1f7), 9);
        assert_eq!(s.by_port.keys().copied().collect::<alloc::vec::Vec<u16>>(), [0x20, 0x1f0, 0x510, 0xffff]);
        assert_eq!(s.ide.unwrap().sectors_written, 3);
        let g = s.guest.as_ref().unwrap();
        assert_eq!(g.checksum, Some(0x04be_1ef5_0fc4_fc25));
        assert_eq!(g.pmtmr_calibrated, Some(false));
        assert_eq!(g.pmtmr_reads, None, "absent, not 0");
        assert_eq!(g.ticks, None);
        // Out again: the same document (nulls kept at the top, absent guest fields absent,
        // the checksum's leading zero kept).
        assert_eq!(serde_json::to_value(&s).unwrap(), sample());
    }

    #[test]
    fn unknown_fields_anywhere_are_rejected() {
        for path in [&[][..], &["by_kind"], &["hypercall_errors"], &["timer"], &["ide"], &["guest"]] {
            let mut v = sample();
            let mut o = &mut v;
            for k in path {
                o = &mut o[*k];
            }
            o.as_object_mut().unwrap().insert("surprise".into(), json!(1));
            let e = serde_json::from_value::<RunStats>(v).unwrap_err().to_string();
            assert!(e.contains("unknown field `surprise`"), "{path:?}: {e}");
        }
    }

    #[test]
    fn missing_required_fields_are_rejected_and_null_is_none() {
        let mut v = sample();
        v.as_object_mut().unwrap().remove("exits_total");
        assert!(serde_json::from_value::<RunStats>(v).unwrap_err().to_string().contains("missing field `exits_total`"));
        let mut v = sample();
        v["ide"] = Value::Null;
        v["guest"] = Value::Null;
        v["name"] = Value::Null;
        let s: RunStats = serde_json::from_value(v.clone()).unwrap();
        assert!(s.ide.is_none() && s.guest.is_none() && s.name.is_none());
        assert_eq!(serde_json::to_value(&s).unwrap(), v, "None is written as null at the top level");
        let mut v = sample();
        v["ide"]["errors"] = json!(-1);
        assert!(serde_json::from_value::<RunStats>(v).is_err(), "counts are unsigned");
    }

    #[test]
    fn files_from_before_the_nic_still_read() {
        let mut v = sample();
        v.as_object_mut().unwrap().remove("nic");
        let s: RunStats = serde_json::from_value(v).unwrap();
        assert!(s.nic.is_none());
    }

    #[test]
    fn port_keys_must_be_hex_ports() {
        for bad in ["496", "1f0", "0x", "0x10000", "0x-1", "+0x1", "0xg", ""] {
            let mut v = sample();
            v["by_port"] = json!({ bad: 1 });
            assert!(serde_json::from_value::<RunStats>(v).is_err(), "key {bad:?} accepted");
        }
        let mut v = sample();
        v["by_port"] = json!({"0x1F0": 2, "0x0": 1});
        let s: RunStats = serde_json::from_value(v).unwrap();
        assert_eq!(s.port_exits(0x1f0), 2);
        assert_eq!(s.port_exits(0), 1);
        // Written back in tinyvmm's spelling.
        assert_eq!(serde_json::to_value(&s).unwrap()["by_port"], json!({"0x0": 1, "0x1f0": 2}));
        // Two spellings of one port.
        let text = serde_json::to_string(&sample()).unwrap().replace("\"0xffff\":7", "\"0x1f0\":1");
        let e = serde_json::from_str::<RunStats>(&text).unwrap_err().to_string();
        assert!(e.contains("port 0x1f0 is listed twice"), "{e}");
        // From a reader too (no borrowed strings).
        let s: RunStats = serde_json::from_reader(serde_json::to_vec(&sample()).unwrap().as_slice()).unwrap();
        assert_eq!(s.guest_entry, 0x10_0000);
        assert_eq!(s.guest.unwrap().checksum, Some(0x04be_1ef5_0fc4_fc25));
    }

    #[test]
    fn outcome_spellings() {
        for o in [RunOutcome::GuestExit, RunOutcome::TripleFault, RunOutcome::HaltedForever, RunOutcome::KvmFailure] {
            assert_eq!(serde_json::to_value(o).unwrap(), json!(o.as_str()));
            assert_eq!(serde_json::from_value::<RunOutcome>(json!(o.as_str())).unwrap(), o);
        }
        assert!(serde_json::from_value::<RunOutcome>(json!("exploded")).is_err());
    }
}
