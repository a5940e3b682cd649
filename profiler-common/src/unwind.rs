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
    /// No rule covers this address (a gap between CFI ranges, code without CFI): the walker
    /// falls back to frame pointers.
    pub const NONE: u8 = 3;
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
///
/// A fixed-step search: the number of steps and the range's size depend only on `len`, never
/// on the data, so the eBPF verifier sees one path per step and merges the two sides of each
/// comparison (provided the index it reads at is not a known constant: see
/// profiler-ebpf/src/stack.rs). A lo/hi search forks on data into 2^steps paths.
#[inline(always)]
pub fn find(addr: u64, len: u32, mut get: impl FnMut(u32) -> Option<u64>) -> Option<u32> {
    if len == 0 {
        return None;
    }
    // Invariant: no entry below `base` is the answer unless `base` is, and every entry from
    // `base + n` on starts after addr.
    let (mut base, mut n) = (0u32, len);
    for _ in 0..SEARCH_STEPS {
        if n <= 1 {
            break;
        }
        let half = n / 2;
        if get(base + half)? <= addr {
            base += half;
        }
        n -= half;
    }
    if n > 1 {
        return None; // more entries than SEARCH_STEPS can search
    }
    (get(base)? <= addr).then_some(base)
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

/// The most return addresses a walked stack holds (`record --stack-depth` at most this).
pub const MAX_STACK_DEPTH: usize = 8;

/// `GuestStack::methods` bits: how the frames of a stack were found.
pub mod method {
    /// At least one frame from the unwind table.
    pub const TABLE: u8 = 1;
    /// At least one frame from the frame pointer (`[BP + 8]`, caller's BP at `[BP]`).
    pub const FRAME_POINTER: u8 = 2;
}

/// One walked guest stack, as the `STACKS` map value: `frames[..depth]` are return addresses,
/// innermost first (`frames[0]` is the caller of the function that exited).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestStack {
    pub depth: u8,
    pub methods: u8,
    pub _pad: [u8; 6],
    pub frames: [u64; MAX_STACK_DEPTH],
}

/// The id a stack is stored under: FNV-1a over its frames and methods, never 0 (0 = "no
/// stack" in `ExitKey::stack`). Two stacks with one id (a 32-bit collision) share the first
/// one's frames.
#[inline(always)]
pub fn stack_id(s: &GuestStack) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < MAX_STACK_DEPTH {
        if i < s.depth as usize {
            let f = s.frames[i];
            let mut b = 0;
            while b < 8 {
                h = (h ^ ((f >> (8 * b)) & 0xff) as u32).wrapping_mul(0x0100_0193);
                b += 1;
            }
        }
        i += 1;
    }
    h = (h ^ s.methods as u32).wrapping_mul(0x0100_0193);
    if h == 0 {
        1
    } else {
        h
    }
}

/// One frame-pointer step: the return address at `[BP + 8]`, the caller's BP at `[BP]`, the
/// caller's SP just above. `None` for a BP that cannot be a frame (0, misaligned, below SP).
#[inline(always)]
pub fn step_frame_pointer(f: &Frame, mut read: impl FnMut(u64) -> Option<u64>) -> Option<Frame> {
    if f.bp == 0 || f.bp & 7 != 0 || (f.sp != 0 && f.bp < f.sp) {
        return None;
    }
    let ip = read(f.bp.checked_add(8)?)?;
    if ip == 0 {
        return None;
    }
    let bp = read(f.bp)?;
    Some(Frame { ip, sp: f.bp + 16, bp })
}

/// Walks up to `depth` (at most [`MAX_STACK_DEPTH`]) return addresses from `leaf` into `out`:
/// by the rule of the `len`-entry table (`entry(i)`, sorted by start) covering each frame's
/// address, or by the frame pointer where no rule covers it (`cfa_base::NONE`, before the
/// first entry). `leaf.sp` 0 means SP is unknown: frame pointers only. Stops at a stop rule
/// or a failed read. Returns the number of return addresses found.
#[inline(always)]
pub fn walk(
    leaf: Frame,
    depth: u32,
    len: u32,
    mut entry: impl FnMut(u32) -> Option<UnwindEntry>,
    mut read: impl FnMut(u64) -> Option<u64>,
    out: &mut GuestStack,
) -> u8 {
    let mut f = leaf;
    let mut n = 0usize;
    out.depth = 0;
    out.methods = 0;
    while n < MAX_STACK_DEPTH {
        if n as u32 >= depth {
            break;
        }
        // A return address is past its call: look up the call itself (a call that ends its
        // function would otherwise find the next function's rule).
        let at = if n == 0 { f.ip } else { f.ip.wrapping_sub(1) };
        let rule = if f.sp == 0 { None } else { find(at, len, |i| entry(i).map(|e| e.start)).and_then(&mut entry) };
        let next = match rule {
            Some(e) if e.cfa_base != cfa_base::NONE => {
                out.methods |= method::TABLE;
                step(&f, &e, &mut read)
            }
            _ => {
                out.methods |= method::FRAME_POINTER;
                step_frame_pointer(&f, &mut read)
            }
        };
        let Some(next) = next else { break };
        out.frames[n] = next.ip;
        f = next;
        n += 1;
    }
    out.depth = n as u8;
    n as u8
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
        // Every address against tables of every length up to 40 (odd and even halvings).
        for len in 1..40u64 {
            let starts: Vec<u64> = (0..len).map(|i| 10 * i + 5).collect();
            for a in 0..10 * len + 20 {
                let want = starts.iter().rposition(|s| *s <= a).map(|i| i as u32);
                assert_eq!(find(a, len as u32, |i| starts.get(i as usize).copied()), want, "len {len} addr {a}");
            }
        }
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

    /// leaf (no frame pointer, CFA = SP+16) <- middle (frame pointer code outside the table)
    /// <- top (CFA = SP+8): a walk mixing the table and the frame pointer.
    #[test]
    fn walks_table_and_frame_pointer_frames() {
        let table = [
            entry(0x1000, cfa_base::SP, 16, None),
            entry(0x1100, cfa_base::NONE, 0, None),
            entry(0x3000, cfa_base::SP, 8, None),
            entry(0x3100, cfa_base::STOP, 0, None),
        ];
        let mut mem = BTreeMap::new();
        // leaf at 0x1010, sp 0x7f00: RA at 0x7f08 -> 0x2050 (middle, not covered by a rule).
        mem.insert(0x7f08u64, 0x2050u64);
        // middle's frame: bp 0x7f20 -> [bp] = 0x7f60 (caller's bp), [bp+8] = 0x3010.
        mem.insert(0x7f20, 0x7f60);
        mem.insert(0x7f28, 0x3010);
        // top at 0x3010, sp 0x7f30: CFA = 0x7f38, RA at 0x7f30 -> 0x3105 (a stop rule).
        mem.insert(0x7f30, 0x3105);
        let read = |a: u64| mem.get(&a).copied();
        let get = |i: u32| table.get(i as usize).copied();
        let mut out = GuestStack::default();
        let leaf = Frame { ip: 0x1010, sp: 0x7f00, bp: 0x7f20 };
        assert_eq!(walk(leaf, 8, 4, get, read, &mut out), 3);
        assert_eq!(&out.frames[..3], &[0x2050, 0x3010, 0x3105]);
        assert_eq!(out.methods, method::TABLE | method::FRAME_POINTER);
        // The depth bounds the walk; a shorter walk has another id.
        let mut two = GuestStack::default();
        assert_eq!(walk(leaf, 2, 4, get, read, &mut two), 2);
        assert_ne!(stack_id(&two), stack_id(&out));
        assert_ne!(stack_id(&out), 0);
        // SP unknown: the leaf by its frame pointer (here the middle's frame, so the leaf
        // is skipped); from there SP is known and the table is used again.
        let mut fp = GuestStack::default();
        assert_eq!(walk(Frame { sp: 0, ..leaf }, 8, 4, get, read, &mut fp), 2);
        assert_eq!(&fp.frames[..2], &[0x3010, 0x3105]);
    }
}
