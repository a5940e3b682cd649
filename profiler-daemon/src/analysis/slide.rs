//! The evidence a profile holds for the guest kernel's KASLR slide: each distinct RIP of an
//! exit that an instruction caused, with the kind of instruction that must be there
//! (`symbolizer::kaslr`). Exits a RIP says nothing about — MMIO (any load or store),
//! interrupts, faults, EPT violations — are left out.
use symbolizer::exit_insns::ExitInsnKind;
use symbolizer::kaslr::SlideEvidence;

use crate::model::{Access, Exit, Profile};

/// The instruction kind an exit's reason name implies (VMX, SVM or KVM_EXIT names).
fn kind_of_reason(name: &str) -> Option<ExitInsnKind> {
    use ExitInsnKind::*;
    Some(match name {
        "IO_INSTRUCTION" | "io" | "IO" => PortIo,
        "HLT" | "hlt" => Hlt,
        "MSR_READ" | "MSR_WRITE" | "msr" => Msr,
        "CPUID" | "cpuid" => Cpuid,
        "VMCALL" | "vmmcall" | "HYPERCALL" => Hypercall,
        "XSETBV" | "xsetbv" => Xsetbv,
        "WBINVD" | "wbinvd" => Wbinvd,
        "MWAIT_INSTRUCTION" | "MONITOR_INSTRUCTION" | "mwait" | "monitor" => Mwait,
        "RDPMC" | "rdpmc" => Rdpmc,
        "CR_ACCESS" | "DR_ACCESS" => CrDr,
        "INVLPG" | "invlpg" => Invlpg,
        "PAUSE_INSTRUCTION" | "pause" => Pause,
        n if (n.starts_with("read_") || n.starts_with("write_")) && (n.contains("_cr") || n.contains("_dr")) => CrDr,
        _ => return None,
    })
}

/// The kind of instruction at an exit's RIP, if the exit says.
fn kind_of_exit(e: &Exit) -> Option<ExitInsnKind> {
    match e.access {
        Access::Port { .. } => Some(ExitInsnKind::PortIo),
        Access::Mmio { .. } => None,
        Access::None => kind_of_reason(&e.reason.name()),
    }
}

/// One entry per distinct (RIP, kind) of the profiles' exits (0 = no RIP is skipped).
pub fn evidence<'a>(profiles: impl IntoIterator<Item = &'a Profile>) -> Vec<SlideEvidence> {
    let mut out: Vec<SlideEvidence> = profiles
        .into_iter()
        .flat_map(|p| p.exits.iter())
        .filter(|e| e.rip != 0)
        .filter_map(|e| Some(SlideEvidence { rip: e.rip, kind: kind_of_exit(e)? }))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_map_to_instruction_kinds() {
        use ExitInsnKind::*;
        for (name, kind) in [
            ("IO_INSTRUCTION", Some(PortIo)),
            ("io", Some(PortIo)),
            ("write_cr3", Some(CrDr)),
            ("read_dr7", Some(CrDr)),
            ("MSR_WRITE", Some(Msr)),
            ("EPT_VIOLATION", None),
            ("npf", None),
            ("EXTERNAL_INTERRUPT", None),
            ("cr0_sel_write", None),
        ] {
            assert_eq!(kind_of_reason(name), kind, "{name}");
        }
    }
}
