//! DWARF call-frame information (`.eh_frame` or `.debug_frame`) compiled into the same
//! per-address-range [`UnwindRule`]s as the ORC tables, for guests that are not Linux or
//! Linux kernels built without ORC.
//!
//! Each row of each FDE's unwind table becomes one rule starting at the row's address. Only
//! what a stack walker in eBPF can follow is kept: CFA = RSP or RBP + offset, the return
//! address at CFA − 8, RBP saved at CFA + n. Anything else (a DWARF expression, a CFA on
//! another register) becomes `CfaBase::Other`, where the walk stops.

use std::path::Path;

use gimli::{BaseAddresses, CfaRule, CieOrFde, RegisterRule, UnwindContext, UnwindSection, X86_64};
use object::{Object, ObjectSection};

use crate::error::SymbolizeError;
use crate::unwind::{CfaBase, FrameKind, UnwindRule};

/// Rules by start address, sorted, from the ELF's CFI; `Ok(None)` when it has none.
/// `.eh_frame` wins over `.debug_frame` when both exist (it is what runs).
pub fn rules_from_elf(path: &Path) -> Result<Option<Vec<(u64, UnwindRule)>>, SymbolizeError> {
    let data = crate::elf::map(path)?;
    let file = object::File::parse(&*data).map_err(|_| SymbolizeError::NotElf { path: path.into() })?;
    let bad = |what: &str, e: gimli::Error| SymbolizeError::BadElf { path: path.into(), reason: format!("{what}: {e}") };
    let section = |name: &str| file.section_by_name(name).and_then(|s| Some((s.address(), s.data().ok()?)));
    let mut rules = Vec::new();
    if let Some((addr, bytes)) = section(".eh_frame") {
        let mut eh = gimli::EhFrame::new(bytes, gimli::LittleEndian);
        eh.set_address_size(8);
        let bases = BaseAddresses::default().set_eh_frame(addr);
        collect(&eh, &bases, &mut rules).map_err(|e| bad(".eh_frame", e))?;
    } else if let Some((_, bytes)) = section(".debug_frame") {
        let mut df = gimli::DebugFrame::new(bytes, gimli::LittleEndian);
        df.set_address_size(8);
        collect(&df, &BaseAddresses::default(), &mut rules).map_err(|e| bad(".debug_frame", e))?;
    } else {
        return Ok(None);
    }
    // At one address a real rule wins over the end marker of the FDE before it.
    rules.sort_by_key(|r| (r.0, r.1.kind == FrameKind::End));
    rules.dedup_by_key(|r| r.0);
    Ok(Some(rules))
}

const END: UnwindRule = UnwindRule { cfa_base: CfaBase::Other(0), cfa_offset: 0, bp_saved_at: None, kind: FrameKind::End };

fn collect<'a, S>(section: &S, bases: &BaseAddresses, out: &mut Vec<(u64, UnwindRule)>) -> gimli::Result<()>
where
    S: UnwindSection<gimli::EndianSlice<'a, gimli::LittleEndian>>,
{
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else { continue };
        let fde = partial.parse(S::cie_from_offset)?;
        let mut rows = fde.rows(section, bases, &mut ctx)?;
        while let Some(row) = rows.next_row()? {
            let (cfa_base, cfa_offset) = match *row.cfa() {
                CfaRule::RegisterAndOffset { register, offset } => match (register, i16::try_from(offset)) {
                    (X86_64::RSP, Ok(o)) => (CfaBase::Sp, o),
                    (X86_64::RBP, Ok(o)) => (CfaBase::Bp, o),
                    (r, _) => (CfaBase::Other(r.0 as u8), 0),
                },
                CfaRule::Expression(_) => (CfaBase::Other(0xff), 0),
            };
            let ra_at_cfa_minus_8 = matches!(row.register(X86_64::RA), Some(RegisterRule::Offset(-8)));
            let bp_saved_at = match row.register(X86_64::RBP) {
                Some(RegisterRule::Offset(o)) => i16::try_from(o).ok(),
                _ => None,
            };
            let kind = if ra_at_cfa_minus_8 { FrameKind::Call } else { FrameKind::End };
            out.push((row.start_address(), UnwindRule { cfa_base, cfa_offset, bp_saved_at, kind }));
        }
        // Past the FDE's end nothing is known (unless another FDE starts there: see below).
        out.push((fde.end_address(), END));
    }
    Ok(())
}
