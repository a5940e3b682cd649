//! kvmprof: which guest functions cause your VM exits, and what do those exits cost?
//!
//! The `kvmprof` binary is a thin CLI over these modules.
pub mod aggregate;
pub mod btf;
pub mod callers;
pub mod demo;
pub mod diff;
pub mod exit_loop;
pub mod flame;
pub mod guest_memory;
pub mod import;
pub mod plot;
pub mod reasons;
pub mod record;
pub mod recording;
pub mod report;
pub mod symbolize_cmd;
pub mod text_table;
pub mod tracefs;
pub mod tracer;
