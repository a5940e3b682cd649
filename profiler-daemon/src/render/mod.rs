//! Where numbers become text: tables, CSV, JSON, folded stacks, flame graphs and SVG charts.
//! Nothing outside this module (and the demo's own text) formats a profile's number.
pub mod advise;
pub mod diff;
pub mod flame;
pub mod perfetto;
pub mod plot;
pub mod pprof;
pub mod report;
pub mod symbolize;
pub mod table;

use crate::model::Direction;

/// `0x1f0`: how addresses, ports and GPAs are printed everywhere.
pub fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// A port cell: `out 0x1f0`, or `-` when the row has no single port.
pub fn port_cell(port: Option<(Direction, u16)>) -> String {
    match port {
        Some((d, p)) => format!("{} {}", d.name(), hex(p as u64)),
        None => "-".into(),
    }
}

/// Seconds with microsecond digits, from nanoseconds.
pub fn secs(ns: u64) -> String {
    format!("{:.6}", ns as f64 / 1e9)
}

/// Microseconds with two decimals, from nanoseconds.
pub fn micros(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1e3)
}
