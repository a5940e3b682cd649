//! Guest address translation, shared by the eBPF programs (which read the caller's return
//! address at the exit) and the daemon's `/proc/PID/mem` reader (which validates memory maps
//! and walks frames in user space). One implementation, so both agree and the unit tests of
//! the page-table walk cover the kernel side too.
//!
//! guest-virtual --(guest page tables, root in CR3)--> guest-physical --([`GuestMemMap`], the
//! VMM's memory map)--> host-virtual in the VMM process.
//!
//! Everything is bounded and `#[inline(always)]` so the BPF verifier sees straight-line code.

/// Regions one VMM may have (tinyvmm has one; QEMU a handful below and above the PCI hole).
pub const MAX_REGIONS: usize = 8;

/// One guest RAM region: guest-physical `[guest_phys, guest_phys + size)` is mapped at
/// `host_virt` in the VMM process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemRegion {
    pub guest_phys: u64,
    pub size: u64,
    pub host_virt: u64,
}

/// A VMM's guest memory map, as the `GUEST_MEMORY` map value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestMemMap {
    pub count: u32,
    pub _pad: u32,
    pub regions: [MemRegion; MAX_REGIONS],
}

impl GuestMemMap {
    /// Host-virtual address of `len` bytes at guest-physical `gpa`, if they lie in one region.
    #[inline(always)]
    pub fn host_addr(&self, gpa: u64, len: u64) -> Option<u64> {
        let mut i = 0;
        while i < MAX_REGIONS {
            if (i as u32) < self.count {
                let r = &self.regions[i];
                let off = gpa.wrapping_sub(r.guest_phys);
                if gpa >= r.guest_phys && off < r.size && len <= r.size - off {
                    return Some(r.host_virt.wrapping_add(off));
                }
            }
            i += 1;
        }
        None
    }
}

/// The control registers that say how the guest translates addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Paging {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

const CR0_PG: u64 = 1 << 31;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PTE_PRESENT: u64 = 1;
const PTE_PS: u64 = 1 << 7;
/// Physical-address bits 51:12 of a page-table entry (and of CR3, whose low bits are PCID).
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Guest-physical address of guest-virtual `gva`, walking the guest's page tables through
/// `read_phys` (reads one little-endian u64 at a guest-physical address).
///
/// Paging off: virtual is physical. Long mode with 4-level paging: 4 KiB, 2 MiB and 1 GiB
/// pages. 32-bit paging and 5-level paging are not walked (`None`): a caller then stays
/// unknown rather than wrong.
#[inline(always)]
pub fn translate(p: &Paging, gva: u64, mut read_phys: impl FnMut(u64) -> Option<u64>) -> Option<u64> {
    if p.cr0 & CR0_PG == 0 {
        return Some(gva);
    }
    if p.efer & EFER_LMA == 0 || p.cr4 & CR4_LA57 != 0 {
        return None;
    }
    let mut table = p.cr3 & ADDR_MASK;
    // Levels 4 (PML4), 3 (PDPT), 2 (PD), 1 (PT): index bits start at 39, 30, 21, 12.
    let mut shift = 39u32;
    while shift >= 12 {
        let entry = read_phys(table + ((gva >> shift) & 511) * 8)?;
        if entry & PTE_PRESENT == 0 {
            return None;
        }
        // A large page at the PDPT (1 GiB) or PD (2 MiB) level, or the 4 KiB page itself.
        if shift == 12 || (entry & PTE_PS != 0 && (shift == 30 || shift == 21)) {
            let page_mask = (1u64 << shift) - 1;
            return Some((entry & ADDR_MASK & !page_mask) | (gva & page_mask));
        }
        table = entry & ADDR_MASK;
        shift -= 9;
    }
    None
}

/// The return address of the frame whose frame pointer is `rbp`: the u64 at `rbp + 8`.
/// With frame pointers, at an exit inside function F (past its prologue) that is the address
/// in F's caller that F returns to. A misaligned or zero `rbp` (no frame pointer, garbage)
/// gives `None`.
#[inline(always)]
pub fn return_address(p: &Paging, rbp: u64, mut read_phys: impl FnMut(u64) -> Option<u64>) -> Option<u64> {
    if rbp == 0 || rbp & 7 != 0 {
        return None;
    }
    // rbp + 8 is 8-aligned, so the u64 never straddles a page.
    let gpa = translate(p, rbp.checked_add(8)?, &mut read_phys)?;
    read_phys(gpa).filter(|ra| *ra != 0)
}
