//! Guest stack unwinding without frame pointers: the compact rule format the unwind tables
//! are loaded in (one [`UnwindEntry`] per address range, sorted by start, from a vmlinux's
//! ORC tables or an ELF's DWARF CFI — see `symbolizer::unwind`), the bounded binary search
//! over it, and one unwinding step. `no_std` and loop-bounded, so the eBPF programs can run
//! the same code the tests run.
//!
//! A rule says: CFA = (SP or BP) + `cfa_offset`; the return address is at CFA − 8; the
//! caller's BP is at CFA + `bp_offset` when `flags & BP_SAVED`, else unchanged; the caller's
//! SP is the CFA.

/// `UnwindEntry::cfa_base`.
pub mod cfa_base {
    pub const SP: u8 = 0;
    pub const BP: u8 = 1;
    /// No rule a walker can follow here (an expression, another register, end of stack).
    pub const STOP: u8 = 2;
}

/// `UnwindEntry::flags`: the caller's BP was saved at CFA + `bp_offset`.
pub const BP_SAVED: u8 = 1;

/// Steps a binary search over at most 2^24 entries needs (the verifier wants a bound).
pub const SEARCH_STEPS: u32 = 24;

/// One address range's rule: 16 bytes, so a distribution kernel's ~370 000 rules take 6 MB.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindEntry {
    /// Link-time start address of the range (the table is sorted by it).
    pub start: u64,
    pub cfa_offset: i16,
    pub bp_offset: i16,
    pub cfa_base: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// Registers of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// The index of the entry covering `addr` (the last with `start <= addr`), among `len`
/// entries that `get(i)` reads; `None` before the first entry or when a read fails.
#[inline(always)]
pub fn find(addr: u64, len: u32, mut get: impl FnMut(u32) -> Option<u64>) -> Option<u32> {
    let (mut lo, mut hi) = (0u32, len);
    // Invariant: every entry below `lo` starts at or before addr, every entry from `hi` on
    // after it.
    for _ in 0..SEARCH_STEPS {
        if lo >= hi {
            break;
        }
        let mid = lo + (hi - lo) / 2;
        if get(mid)? <= addr {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo < hi {
        return None; // more entries than SEARCH_STEPS can search
    }
    lo.checked_sub(1)
}

/// The caller's frame of `f` under rule `e`; `read(addr)` reads a guest u64 at a guest
/// virtual address. `None` when the rule stops the walk or a read fails, or the result makes
/// no sense (a return address of 0, a stack that does not grow up towards the caller).
#[inline(always)]
pub fn step(f: &Frame, e: &UnwindEntry, mut read: impl FnMut(u64) -> Option<u64>) -> Option<Frame> {
    let base = match e.cfa_base {
        cfa_base::SP => f.sp,
        cfa_base::BP => f.bp,
        _ => return None,
    };
    let cfa = base.wrapping_add(e.cfa_offset as i64 as u64);
    if cfa <= f.sp || cfa & 7 != 0 {
        return None;
    }
    let ip = read(cfa - 8)?;
    if ip == 0 {
        return None;
    }
    let bp = if e.flags & BP_SAVED != 0 { read(cfa.wrapping_add(e.bp_offset as i64 as u64))? } else { f.bp };
    Some(Frame { ip, sp: cfa, bp })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    fn entry(start: u64, base: u8, off: i16, bp: Option<i16>) -> UnwindEntry {
        UnwindEntry {
            start,
            cfa_offset: off,
            bp_offset: bp.unwrap_or(0),
            cfa_base: base,
            flags: if bp.is_some() { BP_SAVED } else { 0 },
            _pad: [0; 2],
        }
    }

    #[test]
    fn find_covers_each_range() {
        let starts = [0x100u64, 0x180, 0x200, 0x300];
        let f = |a| find(a, starts.len() as u32, |i| starts.get(i as usize).copied());
        assert_eq!(f(0xff), None);
        assert_eq!(f(0x100), Some(0));
        assert_eq!(f(0x17f), Some(0));
        assert_eq!(f(0x180), Some(1));
        assert_eq!(f(0x2ff), Some(2));
        assert_eq!(f(u64::MAX), Some(3));
        assert_eq!(find(5, 0, |_| None), None);
        // A failed read is no answer, not a wrong one.
        assert_eq!(find(0x200, 4, |_| None), None);
    }

    /// A stack of three frames without frame pointers, unwound by SP-based rules, and one
    /// with a BP-based frame in the middle.
    #[test]
    fn steps_through_sp_and_bp_frames() {
        // Guest memory: return addresses and a saved BP.
        let mut mem = BTreeMap::new();
        // leaf (ip 0x1010, rule CFA=SP+24): RA at sp+16.
        mem.insert(0x7f10u64, 0x2020u64);
        // middle (ip 0x2020, rule CFA=BP+16, BP saved at CFA-16): bp = 0x7f30.
        mem.insert(0x7f38, 0x3030); // RA at CFA-8 = 0x7f40-8
        mem.insert(0x7f30, 0xbeef); // caller's BP at CFA-16
        let read = |a: u64| mem.get(&a).copied();
        let leaf = Frame { ip: 0x1010, sp: 0x7f00, bp: 0x7f30 };
        let mid = step(&leaf, &entry(0x1000, cfa_base::SP, 24, None), read).unwrap();
        assert_eq!(mid, Frame { ip: 0x2020, sp: 0x7f18, bp: 0x7f30 });
        let top = step(&mid, &entry(0x2000, cfa_base::BP, 16, Some(-16)), read).unwrap();
        assert_eq!(top, Frame { ip: 0x3030, sp: 0x7f40, bp: 0xbeef });
        // A stop rule, a CFA below SP, an unreadable slot: no frame.
        assert_eq!(step(&top, &entry(0, cfa_base::STOP, 8, None), read), None);
        assert_eq!(step(&leaf, &entry(0, cfa_base::SP, -8, None), read), None);
        assert_eq!(step(&top, &entry(0, cfa_base::SP, 8, None), read), None);
        let sizes: Vec<usize> = [core::mem::size_of::<UnwindEntry>()].to_vec();
        assert_eq!(sizes, [16]);
    }
}
