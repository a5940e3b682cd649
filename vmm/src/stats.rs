//! Exit statistics: by kind, by port, and for the batched hypercall. The vCPU loop counts
//! into flat arrays (one index per exit); [`ExitStats::by_kind`] and
//! [`ExitStats::port_counts`] turn them into the `--stats-json` types of
//! [`crate::abi::stats`].

use crate::abi::stats::{ExitsByKind, HypercallErrors, PortCounts};

pub struct ExitStats {
    pub total: u64,
    pub io: u64,
    pub hlt: u64,
    pub mmio: u64,
    pub irq_window: u64,
    pub shutdown: u64,
    pub intr: u64,
    pub other: u64,
    /// Exits per port (a `rep outsw` of a sector is one exit).
    pub by_port: Box<[u64; 65536]>,
    pub hypercalls: u64,
    pub hypercall_entries: u64,
    pub hypercall_errors: [u64; 4],
    /// Port accesses replayed from batches (these made no exit of their own).
    pub replayed_by_port: Box<[u64; 65536]>,
    pub interrupts_injected: u64,
}

impl Default for ExitStats {
    fn default() -> Self {
        let zeros = || -> Box<[u64; 65536]> { vec![0u64; 65536].into_boxed_slice().try_into().expect("65536") };
        ExitStats {
            total: 0,
            io: 0,
            hlt: 0,
            mmio: 0,
            irq_window: 0,
            shutdown: 0,
            intr: 0,
            other: 0,
            by_port: zeros(),
            hypercalls: 0,
            hypercall_entries: 0,
            hypercall_errors: [0; 4],
            replayed_by_port: zeros(),
            interrupts_injected: 0,
        }
    }
}

impl ExitStats {
    /// The ports of a per-port array with at least one access (`by_port`,
    /// `replayed_by_port`).
    pub fn port_counts(a: &[u64; 65536]) -> PortCounts {
        (0..=u16::MAX).zip(a.iter()).filter(|&(_, &n)| n > 0).map(|(p, &n)| (p, n)).collect()
    }

    pub fn by_kind(&self) -> ExitsByKind {
        ExitsByKind {
            io: self.io,
            hlt: self.hlt,
            mmio: self.mmio,
            irq_window: self.irq_window,
            shutdown: self.shutdown,
            intr: self.intr,
            other: self.other,
        }
    }

    /// Refused hypercalls by status code (index 0, "ok", is never counted).
    pub fn hypercall_error_counts(&self) -> HypercallErrors {
        HypercallErrors {
            address: self.hypercall_errors[1],
            count: self.hypercall_errors[2],
            entry: self.hypercall_errors[3],
        }
    }

    /// A plain-text summary for the terminal.
    pub fn render(&self) -> String {
        let mut s = format!(
            "exits: total {}  io {}  hlt {}  mmio {}  irq_window {}  shutdown {}  intr {}  other {}\n",
            self.total, self.io, self.hlt, self.mmio, self.irq_window, self.shutdown, self.intr, self.other
        );
        s.push_str("exits by port:");
        for (p, &n) in self.by_port.iter().enumerate() {
            if n > 0 {
                s.push_str(&format!(" {p:#x}={n}"));
            }
        }
        s.push('\n');
        s.push_str(&format!(
            "hypercalls: {} doorbells, {} entries replayed, errors addr/count/entry {}/{}/{}; interrupts injected {}\n",
            self.hypercalls,
            self.hypercall_entries,
            self.hypercall_errors[1],
            self.hypercall_errors[2],
            self.hypercall_errors[3],
            self.interrupts_injected
        ));
        s
    }
}
