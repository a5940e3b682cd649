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

/// Unix nanoseconds as a UTC date and time, `2026-11-25 17:30:01 UTC` (days to a civil
/// date: H. Hinnant's `civil_from_days`).
pub fn utc(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod utc_tests {
    #[test]
    fn dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(1_764_091_801_000_000_000), "2025-11-25 17:30:01 UTC");
        assert_eq!(super::utc(951_782_400_000_000_000), "2000-02-29 00:00:00 UTC");
    }
}
