//! Guest unwind tables in one compact per-address-range form, [`UnwindRule`]s by start
//! address ("CFA = SP or BP + offset; return address at CFA − 8; BP saved at CFA + n"), from
//! a Linux vmlinux's ORC tables (below) or from DWARF CFI (`crate::cfi`).
//!
//! ORC (`CONFIG_UNWINDER_ORC`, the default of Debian, Ubuntu and RHEL kernels):
//! `.orc_unwind_ip` holds one `s32` per entry, the entry's start address relative to the
//! field itself; `.orc_unwind` holds the matching 6-byte `struct orc_entry`. Both are sorted
//! by address at build time (`scripts/sorttable`). An entry covers its address up to the
//! next entry's.
//!
//! Two layouts of the entry's last 16 bits exist:
//! - up to Linux 6.3: `sp_reg:4 bp_reg:4 type:2 end:1` with `ORC_TYPE_CALL = 0`;
//! - from Linux 6.4 (which added the `.orc_header` section): `sp_reg:4 bp_reg:4 type:3
//!   signal:1` with `ORC_TYPE_UNDEFINED = 0, END_OF_STACK = 1, CALL = 2`.

use std::path::Path;

use object::{Object, ObjectSection};

use crate::error::SymbolizeError;

/// Where the canonical frame address (the caller's SP before the call) is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CfaBase {
    Sp,
    Bp,
    /// A register or indirection a stack walker in eBPF does not follow (DX, DI, R10, R13,
    /// `[SP]`, `[BP]`): the walk stops here.
    Other(u8),
}

/// What one ORC entry says, in the terms of a stack walker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindRule {
    /// CFA = base + `cfa_offset`; the return address is at CFA − 8.
    pub cfa_base: CfaBase,
    pub cfa_offset: i16,
    /// The caller's BP is saved at CFA + this offset (None: BP is unchanged).
    pub bp_saved_at: Option<i16>,
    pub kind: FrameKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// An ordinary call frame.
    Call,
    /// A `pt_regs` frame (interrupt or syscall entry), full or partial.
    Regs,
    /// The bottom of the stack, or no information: stop.
    End,
}

const ORC_REG_UNDEFINED: u8 = 0;
const ORC_REG_PREV_SP: u8 = 1;
const ORC_REG_BP: u8 = 4;
const ORC_REG_SP: u8 = 5;

/// Where an [`UnwindTable`] came from (reports say which method each stack used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnwindSource {
    Orc,
    Cfi,
}

/// Unwind rules by start address, sorted; a rule covers its address up to the next one.
#[derive(Clone, Debug)]
pub struct UnwindTable {
    pub source: UnwindSource,
    pub entries: Vec<(u64, UnwindRule)>,
}

impl UnwindTable {
    /// The table of an ELF: its ORC tables when it has them, else its DWARF CFI; `Ok(None)`
    /// when it has neither (frame pointers are then the only way to walk its stacks).
    pub fn from_elf(path: &Path) -> Result<Option<Self>, SymbolizeError> {
        if let Some(t) = Self::from_orc(path)? {
            return Ok(Some(t));
        }
        Self::from_cfi(path)
    }

    /// From DWARF CFI (`.eh_frame`, else `.debug_frame`).
    pub fn from_cfi(path: &Path) -> Result<Option<Self>, SymbolizeError> {
        Ok(crate::cfi::rules_from_elf(path)?.map(|entries| UnwindTable { source: UnwindSource::Cfi, entries }))
    }

    /// Reads the ORC sections of the vmlinux at `path`; `Ok(None)` if it has none (a kernel
    /// built with frame pointers or the guess unwinder).
    pub fn from_orc(path: &Path) -> Result<Option<Self>, SymbolizeError> {
        let data = crate::elf::map(path)?;
        let file = object::File::parse(&*data).map_err(|_| SymbolizeError::NotElf { path: path.into() })?;
        let bad = |reason: &str| SymbolizeError::BadElf { path: path.into(), reason: reason.into() };
        let (Some(ips), Some(orc)) = (file.section_by_name(".orc_unwind_ip"), file.section_by_name(".orc_unwind")) else {
            return Ok(None);
        };
        let new_layout = file.section_by_name(".orc_header").is_some();
        let ip_data = ips.data().map_err(|_| bad("unreadable .orc_unwind_ip"))?;
        let orc_data = orc.data().map_err(|_| bad("unreadable .orc_unwind"))?;
        if ip_data.len() % 4 != 0 || orc_data.len() % 6 != 0 || ip_data.len() / 4 != orc_data.len() / 6 {
            return Err(bad(".orc_unwind_ip and .orc_unwind differ in length"));
        }
        let mut entries: Vec<(u64, UnwindRule)> = ip_data
            .chunks_exact(4)
            .zip(orc_data.chunks_exact(6))
            .enumerate()
            .map(|(i, (ip, e))| {
                let field = ips.address() + 4 * i as u64;
                let addr = field.wrapping_add(i32::from_le_bytes(ip.try_into().unwrap()) as i64 as u64);
                (addr, decode_entry(e.try_into().unwrap(), new_layout))
            })
            .collect();
        // Sorted at build time; sort anyway (stable: of entries at one address, the last one
        // written wins, as the kernel's binary search finds it).
        entries.sort_by_key(|e| e.0);
        Ok(Some(UnwindTable { source: UnwindSource::Orc, entries }))
    }

    /// The rule covering `addr` (the entry at or before it).
    pub fn rule_at(&self, addr: u64) -> Option<UnwindRule> {
        let i = self.entries.partition_point(|e| e.0 <= addr);
        i.checked_sub(1).map(|i| self.entries[i].1)
    }
}

/// One 6-byte `struct orc_entry`.
fn decode_entry(e: [u8; 6], new_layout: bool) -> UnwindRule {
    let sp_offset = i16::from_le_bytes([e[0], e[1]]);
    let bp_offset = i16::from_le_bytes([e[2], e[3]]);
    let bits = u16::from_le_bytes([e[4], e[5]]);
    let sp_reg = (bits & 0xf) as u8;
    let bp_reg = ((bits >> 4) & 0xf) as u8;
    let kind = if new_layout {
        match (bits >> 8) & 0x7 {
            2 => FrameKind::Call,
            3 | 4 => FrameKind::Regs,
            _ => FrameKind::End,
        }
    } else if (bits >> 10) & 1 == 1 || sp_reg == ORC_REG_UNDEFINED {
        FrameKind::End
    } else {
        match (bits >> 8) & 0x3 {
            0 => FrameKind::Call,
            _ => FrameKind::Regs,
        }
    };
    let cfa_base = match sp_reg {
        ORC_REG_SP => CfaBase::Sp,
        ORC_REG_BP => CfaBase::Bp,
        r => CfaBase::Other(r),
    };
    let bp_saved_at = match bp_reg {
        ORC_REG_PREV_SP => Some(bp_offset),
        _ => None,
    };
    UnwindRule { cfa_base, cfa_offset: sp_offset, bp_saved_at, kind }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_both_layouts() {
        // sp_reg SP, sp_offset 16, bp_reg PREV_SP at -16, type CALL.
        let old = decode_entry([16, 0, 0xf0, 0xff, 0x15, 0x00], false);
        assert_eq!(old, UnwindRule { cfa_base: CfaBase::Sp, cfa_offset: 16, bp_saved_at: Some(-16), kind: FrameKind::Call });
        let new = decode_entry([16, 0, 0xf0, 0xff, 0x15, 0x02], true);
        assert_eq!(new, old);
        // Old layout's end bit; new layout's END_OF_STACK.
        assert_eq!(decode_entry([0, 0, 0, 0, 0x05, 0x04], false).kind, FrameKind::End);
        assert_eq!(decode_entry([0, 0, 0, 0, 0x05, 0x01], true).kind, FrameKind::End);
        // BP-based CFA.
        assert_eq!(decode_entry([16, 0, 0xf0, 0xff, 0x14, 0x00], false).cfa_base, CfaBase::Bp);
    }
}
