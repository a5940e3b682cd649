//! The network experiments' contract, shared by the guest (`vmm/guest/src/net/`), tinyvmm,
//! the host-side peers (`vmm::net::peer`) and the tests and demo that read the results:
//! the test network's addresses, the driver's receive modes, the UDP stream's datagram
//! format, and the guest's `@@result` line for the network workloads ([`NetResult`]).
//!
//! ## The test network (`vmm::net::lab`)
//!
//! ```text
//!  HostA 198.18.0.1/24 --veth-- 198.18.0.2/24 HostB 198.18.1.1/24 --TAP-- guest 198.18.1.2/24
//! ```
//!
//! HostB forwards between its two links; HostA routes 198.18.1.0/24 through HostB; the
//! guest's gateway is HostB. All addresses are in the benchmark range 198.18.0.0/15.
//!
//! ## Datagrams of a stream
//!
//! Every datagram of a stream (`net-rx`, `net-tx`, the peers) is at least
//! [`DATAGRAM_HEADER`] bytes, little-endian:
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic [`DATAGRAM_MAGIC`] |
//! | 4 | sequence number, from 0, +1 per datagram |
//! | 8 | length of the whole datagram (UDP payload) |
//! | 12 | FNV-1a (32-bit) over bytes 0..12 and 16..length |
//!
//! followed by a payload that is a function of the sequence number and offset
//! ([`payload_byte`]). A receiver counts a datagram whose checksum, magic or length does
//! not match as `bad_checksum`, and one whose sequence number is not the one after the
//! previous datagram's as `bad_seq` (a lost, duplicated or reordered datagram).

use core::fmt;

/// HostA, the paper's "other machine" (a veth end).
pub const HOST_A_IP: [u8; 4] = [198, 18, 0, 1];
/// HostB on HostA's link.
pub const HOST_B_IP: [u8; 4] = [198, 18, 0, 2];
/// HostB on the guest's link (the TAP): the guest's gateway.
pub const GATEWAY_IP: [u8; 4] = [198, 18, 1, 1];
/// The guest's default address.
pub const GUEST_IP: [u8; 4] = [198, 18, 1, 2];
/// Prefix length of both links.
pub const PREFIX_LEN: u8 = 24;
/// UDP echo port the guest answers in `net-echo` (RFC 862).
pub const ECHO_PORT: u16 = 7;
/// UDP port of the streams: `net-rx` listens on it, `net-tx` sends to HostA's.
pub const STREAM_PORT: u16 = 9000;

/// TCP port `net-tcp-rx` listens on.
pub const TCP_STREAM_PORT: u16 = 9001;

/// Byte `i` of a TCP stream (`net-tcp-rx`, `vmm::net::peer::tcp_send`): not periodic in
/// any small power of two, so a lost, repeated or reordered segment shows.
#[inline]
pub fn tcp_stream_byte(i: u64) -> u8 {
    (i ^ (i >> 8).wrapping_mul(31) ^ (i >> 16).wrapping_mul(7)) as u8
}

/// `BootParams::net_mode`: one interrupt per received packet (read ISR, ack, handle one).
pub const NIC_MODE_IRQ: u32 = 0;
/// `BootParams::net_mode`: on an interrupt mask the NIC's interrupts (IMR), poll the ring
/// until empty under a budget, unmask.
pub const NIC_MODE_NAPI: u32 = 1;
/// Packets one NAPI poll takes before it lets the stack run (Linux's default weight, 64).
pub const NAPI_BUDGET: u32 = 64;

/// The line the guest prints on its console once its driver and stack are up, before it
/// waits for traffic: a host-side peer starts sending after seeing it.
pub const NET_READY_LINE: &str = "@@net-ready";

/// The guest driver's receive mode (`--nic-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NicMode {
    #[default]
    Irq,
    Napi,
}

impl NicMode {
    /// `irq` or `napi`.
    pub fn as_str(self) -> &'static str {
        match self {
            NicMode::Irq => "irq",
            NicMode::Napi => "napi",
        }
    }

    pub fn from_abi(v: u32) -> Option<NicMode> {
        match v {
            NIC_MODE_IRQ => Some(NicMode::Irq),
            NIC_MODE_NAPI => Some(NicMode::Napi),
            _ => None,
        }
    }

    pub fn abi(self) -> u32 {
        match self {
            NicMode::Irq => NIC_MODE_IRQ,
            NicMode::Napi => NIC_MODE_NAPI,
        }
    }

    pub fn parse(s: &str) -> Option<NicMode> {
        match s {
            "irq" => Some(NicMode::Irq),
            "napi" => Some(NicMode::Napi),
            _ => None,
        }
    }
}

/// "KVNP" little-endian.
pub const DATAGRAM_MAGIC: u32 = 0x504e_564b;
/// Header bytes of a stream datagram: the smallest datagram.
pub const DATAGRAM_HEADER: usize = 16;
/// The largest datagram: an Ethernet MTU of 1500 less the IPv4 and UDP headers.
pub const DATAGRAM_MAX: usize = 1472;

/// Byte `i` (from the datagram's start) of the payload of datagram `seq`.
#[inline]
pub fn payload_byte(seq: u32, i: usize) -> u8 {
    (seq.wrapping_mul(0x9e37_79b1) >> 24) as u8 ^ (i as u8).wrapping_mul(31)
}

fn fnv1a32(h: u32, bytes: &[u8]) -> u32 {
    bytes.iter().fold(h, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

fn datagram_checksum(buf: &[u8]) -> u32 {
    fnv1a32(fnv1a32(0x811c_9dc5, &buf[..12]), &buf[DATAGRAM_HEADER..])
}

/// Fills `buf` (its whole length, at least [`DATAGRAM_HEADER`] bytes) as datagram `seq`.
/// Returns false (and writes nothing) if `buf` is shorter than the header.
pub fn fill_datagram(buf: &mut [u8], seq: u32) -> bool {
    if buf.len() < DATAGRAM_HEADER {
        return false;
    }
    let len = buf.len() as u32;
    buf[0..4].copy_from_slice(&DATAGRAM_MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..12].copy_from_slice(&len.to_le_bytes());
    for (i, b) in buf.iter_mut().enumerate().skip(DATAGRAM_HEADER) {
        *b = payload_byte(seq, i);
    }
    let sum = datagram_checksum(buf);
    buf[12..16].copy_from_slice(&sum.to_le_bytes());
    true
}

/// Why a received datagram is not a good one of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramError {
    /// Shorter than the header.
    Short,
    BadMagic,
    /// The length field differs from the received length.
    BadLength,
    BadChecksum,
}

/// Checks a received datagram; its sequence number if it is intact.
pub fn check_datagram(buf: &[u8]) -> Result<u32, DatagramError> {
    if buf.len() < DATAGRAM_HEADER {
        return Err(DatagramError::Short);
    }
    let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    if word(0) != DATAGRAM_MAGIC {
        return Err(DatagramError::BadMagic);
    }
    if word(8) as usize != buf.len() {
        return Err(DatagramError::BadLength);
    }
    if word(12) != datagram_checksum(buf) {
        return Err(DatagramError::BadChecksum);
    }
    Ok(word(4))
}

/// What a receiver of a stream counts, the same way on both sides (guest and host).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCheck {
    /// Datagrams received (good or not).
    pub datagrams: u64,
    /// Their UDP payload bytes.
    pub bytes: u64,
    /// Datagrams whose sequence number was not the previous one's + 1 (the first: not 0).
    pub bad_seq: u64,
    /// Datagrams that failed [`check_datagram`].
    pub bad_checksum: u64,
    /// The sequence number expected next.
    pub next_seq: u32,
}

impl StreamCheck {
    /// Counts one received datagram.
    pub fn add(&mut self, buf: &[u8]) {
        self.datagrams += 1;
        self.bytes += buf.len() as u64;
        match check_datagram(buf) {
            Ok(seq) => {
                if seq != self.next_seq {
                    self.bad_seq += 1;
                }
                self.next_seq = seq.wrapping_add(1);
            }
            Err(_) => self.bad_checksum += 1,
        }
    }
}

/// The guest's report of a network workload: printed as the `@@result {json}` line by the
/// guest (through `Display`), read back by tinyvmm into `stats::GuestReport` (whose field
/// names are these) and by consumers through `GuestReport::net`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetResult {
    /// `net-echo`, `net-rx`, `net-tx`, `net-tcp-rx` or `net-hostile`.
    pub workload: &'static str,
    pub ok: bool,
    pub nic_mode: NicMode,
    pub guest_ip: [u8; 4],
    /// `--count` (datagrams asked for; 0 for `net-echo`).
    pub requested: u64,
    /// `--size` (`net-tx`), else 0.
    pub size: u64,
    /// `net-rx`: datagrams received on the stream port, their bytes and errors;
    /// `net-tx`: datagrams and bytes sent; `net-echo`: UDP echoes answered and their bytes;
    /// `net-tcp-rx`: `bytes` received, `bad_checksum` = bytes that differed from
    /// [`tcp_stream_byte`] (datagrams and `bad_seq` 0).
    pub stream: StreamCheck,
    /// `net-rx`: it stopped on its idle timeout before `requested` datagrams; `net-tcp-rx`:
    /// before the sender closed the connection.
    pub timed_out: bool,
    /// `net-echo`: ICMP echo requests to the guest's address (smoltcp answers each).
    pub echo_requests: u64,
    /// Frames the driver took from the receive ring.
    pub rx_frames: u64,
    /// Frames the driver took from the ring but dropped because the stack was behind (its
    /// software queue of received frames was full: Linux's backlog drop).
    pub rx_queue_drops: u64,
    /// Frames the driver handed to the NIC.
    pub tx_frames: u64,
    /// NIC interrupts the guest took.
    pub rx_interrupts: u64,
    /// NAPI polls (one per pass over the ring; 0 in `irq` mode).
    pub napi_polls: u64,
    /// PM-timer ticks (3.579545 MHz) from the first datagram to the last (`net-rx`,
    /// `net-tx`) or over the whole run (`net-echo`).
    pub pm_ticks: u64,
    /// `net-hostile`: NIC status bits the misprogramming raised, ORed (`SERR`, `TER`,
    /// `RXOVW`), and whether a frame still went out and one came in afterwards.
    pub hostile_isr: u16,
    pub hostile_recovered: bool,
}

impl fmt::Display for NetResult {
    /// The JSON object (one line, no prefix).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ip = self.guest_ip;
        write!(
            f,
            "{{\"workload\":\"{}\",\"status\":\"{}\",\"nic_mode\":\"{}\",\"guest_ip\":\"{}.{}.{}.{}\",\"requested\":{},\"size\":{},\"datagrams\":{},\"bytes\":{},\"bad_seq\":{},\"bad_checksum\":{},\"timed_out\":{},\"echo_requests\":{},\"rx_frames\":{},\"rx_queue_drops\":{},\"tx_frames\":{},\"rx_interrupts\":{},\"napi_polls\":{},\"pm_ticks\":{}",
            self.workload,
            if self.ok { "ok" } else { "error" },
            self.nic_mode.as_str(),
            ip[0], ip[1], ip[2], ip[3],
            self.requested,
            self.size,
            self.stream.datagrams,
            self.stream.bytes,
            self.stream.bad_seq,
            self.stream.bad_checksum,
            self.timed_out,
            self.echo_requests,
            self.rx_frames,
            self.rx_queue_drops,
            self.tx_frames,
            self.rx_interrupts,
            self.napi_polls,
            self.pm_ticks,
        )?;
        if self.workload == "net-hostile" {
            write!(f, ",\"hostile_isr\":{},\"hostile_recovered\":{}", self.hostile_isr, self.hostile_recovered)?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_round_trip_and_damage_is_caught() {
        for size in [DATAGRAM_HEADER, 17, 64, 1000, DATAGRAM_MAX] {
            let mut b = vec![0u8; size];
            assert!(fill_datagram(&mut b, 41));
            assert_eq!(check_datagram(&b), Ok(41));
            for at in [0, 4, 8, 12, size - 1] {
                let mut d = b.clone();
                d[at] ^= 0x40;
                assert!(check_datagram(&d).is_err(), "a flipped byte at {at} of {size} passed");
            }
            assert_eq!(check_datagram(&b[..size - 1]), Err(if size == DATAGRAM_HEADER { DatagramError::Short } else { DatagramError::BadLength }));
        }
        assert!(!fill_datagram(&mut [0u8; 15], 0));
    }

    #[test]
    fn a_stream_counts_gaps_duplicates_and_damage() {
        let mut c = StreamCheck::default();
        let mut b = [0u8; 32];
        for seq in [0, 1, 2, 4, 4, 5] {
            fill_datagram(&mut b, seq);
            c.add(&b);
        }
        b[20] ^= 1;
        c.add(&b);
        assert_eq!((c.datagrams, c.bytes, c.bad_seq, c.bad_checksum, c.next_seq), (7, 224, 2, 1, 6));
    }

    #[test]
    fn modes_spell_and_parse() {
        for m in [NicMode::Irq, NicMode::Napi] {
            assert_eq!(NicMode::parse(m.as_str()), Some(m));
            assert_eq!(NicMode::from_abi(m.abi()), Some(m));
        }
        assert_eq!(NicMode::parse("poll"), None);
        assert_eq!(NicMode::from_abi(7), None);
    }
}
