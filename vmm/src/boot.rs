//! Guest memory, ELF loading and the 64-bit entry state.

use crate::abi::*;
use crate::VmmError;
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::loader::{elf::Elf, KernelLoader};
use std::io::Cursor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Where the guest starts, after loading.
pub struct Loaded {
    pub entry: u64,
    pub end: u64,
}

pub fn create_memory(size: u64) -> Result<GuestMemoryMmap, VmmError> {
    let size = usize::try_from(size).map_err(|_| VmmError::Config("memory size too large".into()))?;
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)])
        .map_err(|e| VmmError::Config(format!("cannot allocate guest memory: {e}")))
}

/// Loads the ELF's PT_LOAD segments at their physical addresses. The image must sit
/// between 1 MiB and the end of RAM, and its entry point inside it.
pub fn load_elf(mem: &GuestMemoryMmap, elf: &[u8]) -> Result<Loaded, VmmError> {
    let bad = |why: String| VmmError::BadGuest(why);
    check_segments(elf, mem.last_addr().0.saturating_add(1))?;
    let r = Elf::load(mem, None, &mut Cursor::new(elf), Some(GuestAddress(KERNEL_MIN_ADDR)))
        .map_err(|e| bad(format!("{e}")))?;
    let entry = r.kernel_load.0;
    let end = r.kernel_end;
    let ram_end = mem.last_addr().0;
    if entry < KERNEL_MIN_ADDR || entry >= end || end > ram_end {
        return Err(bad(format!("entry point {entry:#x} is not inside the loaded image {KERNEL_MIN_ADDR:#x}..{end:#x}")));
    }
    Ok(Loaded { entry, end })
}

/// linux-loader checks only the entry point against the 1 MiB floor: every PT_LOAD
/// segment (memory size, so .bss too) must also lie in [1 MiB, end of RAM).
fn check_segments(elf: &[u8], ram_end: u64) -> Result<(), VmmError> {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let bad = |why: String| VmmError::BadGuest(why);
    let file = ElfFile64::<object::Endianness>::parse(elf).map_err(|e| bad(format!("not a 64-bit ELF: {e}")))?;
    let endian = file.endian();
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) != object::elf::PT_LOAD {
            continue;
        }
        let start = ph.p_paddr(endian);
        let end = start.checked_add(ph.p_memsz(endian));
        match end {
            Some(end) if start >= KERNEL_MIN_ADDR && end <= ram_end => {}
            _ => {
                return Err(bad(format!(
                    "segment at {start:#x} (+{:#x}) is outside {KERNEL_MIN_ADDR:#x}..{ram_end:#x}",
                    ph.p_memsz(endian)
                )))
            }
        }
    }
    Ok(())
}

/// GDT, identity-mapped page tables (2 MiB pages over min(RAM, 1 GiB)) and boot params.
pub fn write_boot_structures(mem: &GuestMemoryMmap, params: &BootParams) -> Result<(), VmmError> {
    let w = |e: vm_memory::GuestMemoryError| VmmError::Config(format!("cannot write boot structures: {e}"));
    let gdt: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT_ADDR + 8 * i as u64)).map_err(w)?;
    }
    mem.write_obj(PDPT_ADDR | 3, GuestAddress(PML4_ADDR)).map_err(w)?;
    mem.write_obj(PD_ADDR | 3, GuestAddress(PDPT_ADDR)).map_err(w)?;
    for i in 0..512u64 {
        // Present, writable, 2 MiB page.
        mem.write_obj((i << 21) | 0x83, GuestAddress(PD_ADDR + 8 * i)).map_err(w)?;
    }
    mem.write_obj(*params, GuestAddress(BOOT_PARAMS_ADDR)).map_err(w)?;
    Ok(())
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Long mode, paging on, the GDT above; the IDT is empty until the guest loads its own.
pub fn long_mode_sregs(mut s: kvm_sregs) -> kvm_sregs {
    s.cs = segment(0x08, true);
    let data = segment(0x10, false);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = 23;
    s.idt.base = 0;
    s.idt.limit = 0;
    s.cr3 = PML4_ADDR;
    s.cr4 = 0x20; // PAE
    s.cr0 = 0x8001_0033; // PG | WP | NE | ET | MP | PE
    s.efer = 0x500; // LMA | LME
    s
}

pub fn entry_regs(entry: u64) -> kvm_regs {
    kvm_regs { rip: entry, rsp: 0x8_0000, rdi: BOOT_PARAMS_ADDR, rflags: 0x2, ..Default::default() }
}

/// `{"regions":[{"guest_phys":"0x0","size":N,"host_virt":"0x7f..."}]}`.
pub fn memory_map_json(mem: &GuestMemoryMmap) -> serde_json::Value {
    let regions: Vec<_> = mem
        .iter()
        .map(|r| {
            serde_json::json!({
                "guest_phys": format!("{:#x}", r.start_addr().0),
                "size": r.len(),
                "host_virt": format!("{:#x}", r.as_ptr() as usize),
            })
        })
        .collect();
    serde_json::json!({ "pid": std::process::id(), "regions": regions })
}
