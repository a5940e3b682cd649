//! Numbers in, numbers out: reports, callers, diffs and percentiles over profiles.
pub mod advise;
pub mod callers;
pub mod diff;
pub mod percentile;
pub mod report;
pub mod slide;
