//! The typed data: exits as numbers, profiles, the recording file, and the user-space half of
//! the aggregation. Nothing here formats a number for a person: that is `render`'s job.
pub mod aggregate;
pub mod exit;
pub mod profile;
pub mod reasons;
pub mod record_stream;
pub mod recording;

pub use exit::{Access, Direction, Exit, GuestStack, Isa, Reason, Source, StackMethod};
pub use profile::{GuestMemoryOrigin, Meta, Profile, Record, Run, RunAccess, Runs, StackInfo, ThreadInfo};
