//! The demo's network half as types: `net` in `kvmprof demo --json` (fields documented in the
//! README), and the text and plots are drawn from the same values.
use serde::Serialize;

use super::paper;
use super::HotFn;

/// `net` in the demo JSON.
#[derive(Debug, Serialize)]
pub struct NetSection {
    pub setup: NetSetup,
    pub paper: NetPaper,
    /// Fig. 3: ping round trips between the lab's machines and the guest.
    pub rtt: Rtt,
    /// Fig. 4 / Fig. 9: UDP streams and request/response with the driver in `irq` and `napi`.
    pub stream: NetStream,
    /// Table 2: the hot guest functions during the UDP stream to the guest.
    pub hot_functions: NetHot,
}

/// One sentence per network experiment: the exact runs.
#[derive(Debug, Serialize)]
pub struct NetSetup {
    pub lab: String,
    pub rtt: String,
    pub stream: String,
    pub exits: String,
    pub hot_functions: String,
}

/// The paper's network figures printed beside ours; the rest of its figures are compared by
/// shape only (their absolute numbers are of a 2010 host and netperf, not reproducible here).
#[derive(Debug, Serialize)]
pub struct NetPaper {
    pub fig3_virtualization_share_pct: f64,
    pub fig9_no_napi_gain_pct: f64,
    pub table2_hot_functions: &'static [&'static str],
    pub shape_only: &'static str,
}

impl Default for NetPaper {
    fn default() -> Self {
        NetPaper {
            fig3_virtualization_share_pct: paper::FIG3_VIRT_SHARE_PCT,
            fig9_no_napi_gain_pct: paper::FIG9_NO_NAPI_GAIN_PCT,
            table2_hot_functions: paper::TABLE2_HOT_FUNCTIONS,
            shape_only: paper::NET_SHAPE_ONLY,
        }
    }
}

/// Fig. 3.
#[derive(Debug, Serialize)]
pub struct Rtt {
    /// The guest driver's receive mode during the pings.
    pub mode: &'static str,
    /// Pings per path, and the interval between them.
    pub count: u32,
    pub interval_ms: f64,
    /// HostA↔HostB, HostB↔guest, HostA↔guest.
    pub paths: Vec<RttPath>,
    /// `100 × (HostA↔guest − HostA↔HostB) / HostA↔guest`, mean RTTs: the share of the round
    /// trip to the guest that the extra hop into the VM costs.
    pub guest_share_pct: f64,
}

/// One `ping -c COUNT` and its summary lines.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RttPath {
    pub from: &'static str,
    pub to: &'static str,
    pub address: String,
    pub sent: u64,
    pub received: u64,
    pub min_ms: f64,
    pub avg_ms: f64,
    pub max_ms: f64,
    pub mdev_ms: f64,
}

/// Fig. 4 / Fig. 9.
#[derive(Debug, Serialize)]
pub struct NetStream {
    /// Medians over the rounds.
    pub irq: ModeSummary,
    pub napi: ModeSummary,
    /// What removing NAPI changed (`100 × (irq − napi) / napi` of the medians); the paper
    /// measured +60 % in each.
    pub no_napi_change_pct: NoNapiChange,
    /// Whether removing NAPI helped here, in words.
    pub verdict: String,
    /// Every round: the irq runs, then the napi runs (interleaved, as the host's noise asks).
    pub rounds: Vec<Round>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct NoNapiChange {
    pub udp_stream_to_guest: f64,
    pub udp_stream_from_guest: f64,
    pub udp_rr: f64,
}

/// One mode's medians over the rounds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModeSummary {
    pub mode: &'static str,
    pub rounds: usize,
    /// UDP payload Mbit/s, received by the guest (to) and by HostA (from).
    pub to_guest_mbit_s: f64,
    pub from_guest_mbit_s: f64,
    pub rr_per_s: f64,
    /// Exits per datagram (per transaction for RR), console output left out.
    pub to_guest_exits_per_packet: f64,
    pub from_guest_exits_per_packet: f64,
    pub rr_exits_per_transaction: f64,
    /// Exits on the NIC's registers per datagram (per transaction for RR).
    pub to_guest_nic_exits_per_packet: f64,
    pub from_guest_nic_exits_per_packet: f64,
    pub rr_nic_exits_per_transaction: f64,
    /// NIC interrupts (tinyvmm's count) per datagram received by the guest.
    pub to_guest_interrupts_per_packet: f64,
}

/// One round: a run of each test in each mode.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Round {
    pub irq: ModeRuns,
    pub napi: ModeRuns,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModeRuns {
    pub mode: &'static str,
    pub to_guest: Stream,
    pub from_guest: Stream,
    pub rr: RequestResponse,
}

/// One UDP stream: `net-rx` (to the guest, sent from HostA) or `net-tx` (from the guest,
/// received in HostA).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stream {
    pub direction: &'static str,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub payload_bytes: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Datagrams whose sequence number was not the next one expected, or whose checksum
    /// did not match (checked by the receiver).
    pub out_of_order: u64,
    pub bad_checksums: u64,
    /// The receiver's time from the first to the last datagram.
    pub seconds: f64,
    pub mbit_s: f64,
    pub datagrams_per_s: f64,
    pub exits: PacketExits,
    pub nic: NicCounts,
}

/// UDP request/response against the guest's echo port: one request in flight at a time.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RequestResponse {
    pub transactions: u64,
    pub payload_bytes: u64,
    pub seconds: f64,
    pub per_s: f64,
    /// Mean round trip of one transaction.
    pub mean_us: f64,
    /// Per transaction (two packets).
    pub exits: PacketExits,
}

/// Exits recorded by kvmprof between the start and the end of the traffic, per packet.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PacketExits {
    /// Datagrams (transactions for RR) the exits are divided by.
    pub packets: u64,
    /// All exits of the phase but the console's (port 0x3f8).
    pub exits: u64,
    pub per_packet: f64,
    /// Exits on the NIC's registers (ports 0xc000–0xc0ff).
    pub nic_exits: u64,
    pub nic_per_packet: f64,
    /// The interrupt path: reads/writes of ISR and IMR, EOIs to the PIC, interrupt windows.
    pub irq_path_exits: u64,
    pub irq_path_per_packet: f64,
    pub exit_time_ns: u64,
}

/// tinyvmm's own NIC counters for the whole run, beside what kvmprof recorded on the NIC's
/// ports over the whole run (they must agree).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct NicCounts {
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub rx_dropped: u64,
    pub interrupts: u64,
    /// Sum of tinyvmm's per-register reads and writes.
    pub tinyvmm_register_exits: u64,
    /// kvmprof: exits on ports 0xc000–0xc0ff over the whole run.
    pub recorded_register_exits: u64,
}

/// Table 2.
#[derive(Debug, Serialize)]
pub struct NetHot {
    /// Which run the rows come from.
    pub run: String,
    pub rows: Vec<HotFn>,
    pub total_exits: u64,
    pub total_time_ns: u64,
    /// Of the paper's Table 2 functions, those among our rows.
    pub paper_functions_found: Vec<String>,
}
