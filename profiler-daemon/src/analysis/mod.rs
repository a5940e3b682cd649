//! Numbers in, numbers out: reports, callers, diffs and percentiles over profiles.
pub mod callers;
pub mod diff;
pub mod percentile;
pub mod report;
