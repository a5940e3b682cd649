//! The kernel command line of a PVH boot (`qemu-system-x86_64 -kernel guest.elf -append
//! "..."`), parsed into the same [`BootParams`] tinyvmm hands over in memory, plus the
//! settings only QEMU needs.
//!
//! Words, separated by spaces, tinyvmm's `run` flags without the dashes:
//! `workload=disk-write|disk-read|timer|pio-loop|hostile|triple-fault|timer-disk`,
//! `net-echo|net-rx|net-tx|net-tcp-rx|net-hostile` (they need tinyvmm's NIC at 0xc000, IRQ 5),
//! `count=N`, `seconds=S`, `size=BYTES`, `nic-mode=irq|napi`, `batch-pio`, `skip-pmtmr-calibration`, and for QEMU
//! `pmtmr=PORT` (else from the ACPI FADT, else 0x608), `exit-port=PORT` (isa-debug-exit's
//! iobase, default 0xf4), `wait=serial` (print `@@waiting` and start the workload only when a
//! byte arrives on COM1: lets a profiler attach to a booted guest first). Numbers are decimal
//! or 0x-hex.

use crate::abi::*;

pub struct Cmdline {
    pub params: BootParams,
    pub pmtmr: Option<u16>,
    pub exit_port: u16,
    pub wait_serial: bool,
}

/// Default `isa-debug-exit` iobase used by the docs and tests (`iobase=0xf4,iosize=0x04`).
pub const DEFAULT_EXIT_PORT: u16 = 0xf4;

fn number(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        _ => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in digits {
        let d = (c as char).to_digit(radix)? as u64;
        v = v.checked_mul(radix as u64)?.checked_add(d)?;
    }
    Some(v)
}

fn workload(name: &[u8]) -> Option<u32> {
    Some(match name {
        b"disk-write" => WL_DISK_WRITE,
        b"disk-read" => WL_DISK_READ,
        b"timer" => WL_TIMER,
        b"pio-loop" => WL_PIO_LOOP,
        b"hostile" => WL_HOSTILE,
        b"triple-fault" => WL_TRIPLE_FAULT,
        b"timer-disk" => WL_TIMER_DISK,
        b"net-echo" => WL_NET_ECHO,
        b"net-rx" => WL_NET_RX,
        b"net-tx" => WL_NET_TX,
        b"net-hostile" => WL_NET_HOSTILE,
        b"net-tcp-rx" => WL_NET_TCP_RX,
        _ => return None,
    })
}

/// Parses `text`; on error returns the offending word.
pub fn parse(text: &[u8]) -> Result<Cmdline, &[u8]> {
    let mut c = Cmdline {
        params: BootParams {
            magic: BOOT_PARAMS_MAGIC,
            version: BOOT_PARAMS_VERSION,
            workload: 0,
            flags: 0,
            count: 1000,
            seconds: 1,
            ram_size: 0,
            net_size: 64,
            net_mode: net::NIC_MODE_IRQ,
            net_guest_ip: net::GUEST_IP,
            net_gateway: net::GATEWAY_IP,
            net_peer_ip: net::HOST_A_IP,
            net_port: net::STREAM_PORT,
            net_prefix: net::PREFIX_LEN,
            _reserved: 0,
        },
        pmtmr: None,
        exit_port: DEFAULT_EXIT_PORT,
        wait_serial: false,
    };
    for word in text.split(|b| *b == b' ' || *b == b'\t' || *b == b'\n').filter(|w| !w.is_empty()) {
        let (key, value) = match word.iter().position(|b| *b == b'=') {
            Some(i) => (&word[..i], Some(&word[i + 1..])),
            None => (word, None),
        };
        let port = |v: Option<&[u8]>| v.and_then(number).and_then(|n| u16::try_from(n).ok());
        match (key, value) {
            (b"workload", Some(v)) => c.params.workload = workload(v).ok_or(word)?,
            (b"count", v) => c.params.count = v.and_then(number).ok_or(word)?,
            (b"seconds", v) => c.params.seconds = v.and_then(number).ok_or(word)?,
            (b"batch-pio", None) => c.params.flags |= FLAG_BATCH_PIO,
            (b"skip-pmtmr-calibration", None) => c.params.flags |= FLAG_SKIP_PMTMR_CALIBRATION,
            (b"pmtmr", v) => c.pmtmr = Some(port(v).ok_or(word)?),
            (b"exit-port", v) => c.exit_port = port(v).ok_or(word)?,
            (b"wait", Some(b"serial")) => c.wait_serial = true,
            (b"size", v) => c.params.net_size = v.and_then(number).and_then(|n| u32::try_from(n).ok()).ok_or(word)?,
            (b"nic-mode", Some(b"irq")) => c.params.net_mode = net::NIC_MODE_IRQ,
            (b"nic-mode", Some(b"napi")) => c.params.net_mode = net::NIC_MODE_NAPI,
            _ => return Err(word),
        }
    }
    if c.params.workload == 0 {
        return Err(b"workload=");
    }
    Ok(c)
}
