//! Typed errors of the live side: each keeps its cause (`#[source]`), none is matched on text.
use std::error::Error as StdError;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("kvmprof {what} needs root (it loads eBPF programs and reads tracefs): run it with sudo")]
    NotRoot { what: &'static str },
    #[error("this kvmprof was built without its eBPF programs (KVMPROF_SKIP_EBPF=1): build it again without that variable, after scripts/setup.sh")]
    NoEbpfObject,
    #[error("cannot load the eBPF programs{}", privilege_hint(.source))]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("the kernel rejected eBPF program {program}{}", privilege_hint(.source))]
    Verify {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot attach eBPF program {program} to {tracepoint}")]
    Attach {
        program: &'static str,
        tracepoint: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot prepare the eBPF object for this kernel")]
    Object {
        #[source]
        source: BoxError,
    },
    #[error("the eBPF object has no {kind} {name}: it does not match this kvmprof (rebuild)")]
    MissingInObject { kind: &'static str, name: &'static str },
    #[error("the eBPF map {map} has an unexpected type")]
    MapType {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot read the in-kernel map {map}")]
    ReadMap {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot write the in-kernel map {map}")]
    WriteMap {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// Kernel facts the programs need (tracepoint formats, BTF offsets) could not be read.
    #[error("{what}")]
    Kernel {
        what: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("cannot run the command {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// " (loading eBPF needs root, ...)" when an error in the chain is EPERM/EACCES from the kernel.
fn privilege_hint(e: &(dyn StdError + 'static)) -> &'static str {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                return " (loading eBPF needs root, or CAP_BPF + CAP_PERFMON)";
            }
        }
        cur = err.source();
    }
    ""
}

/// Fails unless running as root.
pub fn require_root(what: &'static str) -> Result<(), LiveError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LiveError::NotRoot { what });
    }
    Ok(())
}
