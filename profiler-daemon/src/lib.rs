//! kvmprof: which guest functions cause your VM exits, and what do those exits cost?
//!
//! The path of an exit, stage by stage (see the README's Layout):
//! `live` (eBPF programs, the Session) → `model` (typed exits, profiles, recordings) →
//! `analysis` (reports, diffs, callers, percentiles) → `render` (text, JSON, SVG).
//! `import` turns recorded tracepoint text into the model; `demo` runs the paper's experiments;
//! `top` is the live terminal view (snapshot deltas of a live session); `serve` the Prometheus
//! exporter (a daemon around one host-wide session);
//! the command line (clap) is in the binary's `cli` module, not here.
pub mod analysis;
pub mod fuzz;
pub mod demo;
pub mod import;
pub mod live;
pub mod model;
pub mod render;
pub mod serve;
pub mod top;
