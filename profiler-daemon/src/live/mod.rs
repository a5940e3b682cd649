//! Root-only: loading and attaching the eBPF programs (the [`Session`]), the processes they
//! trace, tracefs, the kernel's BTF, and the guest memory of a VMM.
mod batch;
pub mod btf;
pub mod checkpoint;
pub mod command;
mod error;
pub mod guest_memory;
pub mod kfunc;
pub mod qemu_memory;
pub mod record;
pub mod session;
pub mod stacks;
pub mod targets;
pub mod tracefs;

pub use error::{require_root, LiveError};
pub use session::{check_attach, detect_source, GuestMemoryMap, Session, SessionConfig, SourcePrograms, Target};
