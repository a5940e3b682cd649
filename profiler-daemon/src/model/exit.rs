//! One aggregated exit site, as numbers: who exited (process, vCPU thread), why (a [`Reason`]),
//! where (the guest RIP and its caller) and on what (an [`Access`]: port or MMIO address).
//! Decoded once from the kernel's `ExitKey` or from a recording; formatted only by `render`.
use std::fmt;

use profiler_common::{detail, isa, ExitKey, ExitStats, NO_VCPU, UNKNOWN_CALLER};
use serde::{Deserialize, Serialize};

use super::reasons;

/// Which exit source produced a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `kvm_exit`/`kvm_entry`: hardware-assisted KVM (VMX/SVM).
    Hw,
    /// `kvm_pio`/`kvm_mmio`/`kvm_userspace_exit` + re-entry, the RIP read from the vCPU's
    /// instruction emulator: KVM without `kvm_exit` (PVM, where every instruction is emulated).
    #[default]
    Emulated,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Hw => "hw",
            Source::Emulated => "emulated",
        }
    }

    /// One line saying where the exits come from, for report headers.
    pub fn description(self) -> &'static str {
        match self {
            Source::Hw => "hw: kvm_exit/kvm_entry",
            Source::Emulated => "emulated: kvm_pio/kvm_mmio/kvm_userspace_exit at the emulated instruction's RIP",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The table an exit reason code belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// `KVM_EXIT_*` (exits to user space; the emulated source).
    KvmExit,
    /// Intel VMX basic exit reasons.
    Vmx,
    /// AMD SVM exit codes.
    Svm,
}

impl Isa {
    pub fn from_code(code: u8) -> Option<Isa> {
        match code {
            isa::KVM_EXIT => Some(Isa::KvmExit),
            isa::VMX => Some(Isa::Vmx),
            isa::SVM => Some(Isa::Svm),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Isa::KvmExit => isa::KVM_EXIT,
            Isa::Vmx => isa::VMX,
            Isa::Svm => isa::SVM,
        }
    }

    /// As the recording file spells it.
    pub fn name(self) -> &'static str {
        reasons::isa_name(self.code())
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        [Isa::KvmExit, Isa::Vmx, Isa::Svm].into_iter().find(|i| i.name() == name)
    }
}

/// An exit reason: a code in the table of its ISA. Printed with the kernel's own names
/// (`IO_INSTRUCTION`, `io`, `IO`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reason {
    pub isa: Isa,
    pub code: u32,
}

impl Reason {
    pub fn name(&self) -> String {
        reasons::name(self.isa.code(), self.code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Direction of a port or MMIO access: `In` is a port read (`in`) or an MMIO read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    /// `in`/`out`, as reports print port accesses.
    pub fn name(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// What the exiting instruction accessed, when the tracepoints said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Access {
    #[default]
    None,
    Port { dir: Direction, port: u16 },
    Mmio { dir: Direction, gpa: u64 },
}

impl Access {
    pub fn port(self) -> Option<(Direction, u16)> {
        match self {
            Access::Port { dir, port } => Some((dir, port)),
            _ => None,
        }
    }

    /// The kernel key's `(detail_kind, detail)`.
    pub fn to_detail(self) -> (u8, u64) {
        match self {
            Access::None => (detail::NONE, 0),
            Access::Port { dir: Direction::In, port } => (detail::PORT_IN, port as u64),
            Access::Port { dir: Direction::Out, port } => (detail::PORT_OUT, port as u64),
            Access::Mmio { dir: Direction::In, gpa } => (detail::MMIO_READ, gpa),
            Access::Mmio { dir: Direction::Out, gpa } => (detail::MMIO_WRITE, gpa),
        }
    }

    pub fn from_detail(kind: u8, value: u64) -> Result<Access, String> {
        let port = || u16::try_from(value).map_err(|_| format!("port {value:#x} is over 0xffff"));
        Ok(match kind {
            detail::NONE => Access::None,
            detail::PORT_IN => Access::Port { dir: Direction::In, port: port()? },
            detail::PORT_OUT => Access::Port { dir: Direction::Out, port: port()? },
            detail::MMIO_READ => Access::Mmio { dir: Direction::In, gpa: value },
            detail::MMIO_WRITE => Access::Mmio { dir: Direction::Out, gpa: value },
            k => return Err(format!("unknown access kind {k}")),
        })
    }
}

/// One aggregated exit site and its count, time and time histogram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The VMM process and its vCPU thread.
    pub tgid: u32,
    pub tid: u32,
    /// The vCPU index when the tracepoint names it (`kvm_exit` on the hw source).
    pub vcpu: Option<u32>,
    pub reason: Reason,
    /// Linear address of the instruction that exited (CS base + RIP).
    pub rip: u64,
    pub access: Access,
    /// Return address in the guest function that called the exiting one, when it was read.
    pub caller: Option<u64>,
    pub stats: ExitStats,
    /// The guest stack walked at the exit (`record --stack-depth` above 1), when one was.
    pub stack: Option<GuestStack>,
}

/// How the frames of a walked guest stack were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StackMethod {
    /// Every frame from the unwind table (ORC or DWARF CFI).
    Table,
    /// Every frame from the frame pointer (`[RBP + 8]`).
    FramePointer,
    /// Some frames each way (code without unwind rules between code with them).
    Mixed,
    /// Not known yet: a stack whose frames were not read (see [`GuestStack`]).
    Unknown,
}

impl StackMethod {
    /// From `profiler_common::unwind::GuestStack::methods`.
    pub fn from_bits(bits: u8) -> StackMethod {
        use profiler_common::unwind::method;
        match (bits & method::TABLE != 0, bits & method::FRAME_POINTER != 0) {
            (true, false) => StackMethod::Table,
            (false, true) => StackMethod::FramePointer,
            (true, true) => StackMethod::Mixed,
            (false, false) => StackMethod::Unknown,
        }
    }

    /// As recordings and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            StackMethod::Table => "table",
            StackMethod::FramePointer => "frame_pointer",
            StackMethod::Mixed => "table+frame_pointer",
            StackMethod::Unknown => "unknown",
        }
    }

    pub fn from_name(name: &str) -> Option<StackMethod> {
        [StackMethod::Table, StackMethod::FramePointer, StackMethod::Mixed, StackMethod::Unknown].into_iter().find(|m| m.name() == name)
    }
}

/// A guest stack walked at an exit: return addresses, innermost first (`frames[0]` is the
/// caller), stored in the kernel under `id` (`ExitKey::stack`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GuestStack {
    pub id: u32,
    pub method: StackMethod,
    /// Empty until the session has read them from the `STACKS` map.
    pub frames: Vec<u64>,
}

impl Exit {
    /// Decodes the kernel's key; fails on codes no kvmprof program writes.
    pub fn from_key(key: &ExitKey, stats: ExitStats) -> Result<Exit, String> {
        let isa = Isa::from_code(key.isa).ok_or_else(|| format!("unknown isa {}", key.isa))?;
        Ok(Exit {
            tgid: key.tgid,
            tid: key.tid,
            vcpu: (key.vcpu != NO_VCPU).then_some(key.vcpu),
            reason: Reason { isa, code: key.reason },
            rip: key.rip,
            access: Access::from_detail(key.detail_kind, key.detail)?,
            caller: (key.caller != UNKNOWN_CALLER).then_some(key.caller),
            stats,
            stack: (key.stack != 0).then(|| GuestStack { id: key.stack, method: StackMethod::Unknown, frames: Vec::new() }),
        })
    }

    /// The kernel key this exit aggregates under.
    pub fn key(&self) -> ExitKey {
        let (detail_kind, detail) = self.access.to_detail();
        ExitKey {
            rip: self.rip,
            detail,
            caller: self.caller.unwrap_or(UNKNOWN_CALLER),
            tgid: self.tgid,
            tid: self.tid,
            vcpu: self.vcpu.unwrap_or(NO_VCPU),
            reason: self.reason.code,
            isa: self.reason.isa.code(),
            detail_kind,
            _pad: [0; 2],
            stack: self.stack.as_ref().map_or(0, |s| s.id),
        }
    }
}
