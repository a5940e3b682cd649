//! 64-bit long mode for the calibration guests, entered directly by `KVM_SET_SREGS` (no
//! firmware, no mode switch in the guest): a GDT with a 64-bit code segment, identity-mapped
//! page tables (one PML4, one PDPT, one PD with one 2 MiB page over the guest's low memory),
//! CR0.PE|PG, CR4.PAE, EFER.LME|LMA. The same state tinyvmm's `boot::long_mode_sregs` gives
//! its guest, at addresses inside exit-loop's 64 KiB.
use anyhow::{Context, Result};
use kvm_bindings::{kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Above the guest code (at `LOAD_ADDR`, a few dozen bytes) and inside the 64 KiB of RAM.
pub const GDT_ADDR: u64 = 0x8000;
const PML4_ADDR: u64 = 0x9000;
const PDPT_ADDR: u64 = 0xA000;
const PD_ADDR: u64 = 0xB000;

const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;

/// Present | writable, for every level; `PS` makes a PD entry a 2 MiB page.
const PRESENT_RW: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Writes the GDT (null, 64-bit code, data) and the page tables into guest memory.
pub fn write_tables(mem: &GuestMemoryMmap) -> Result<()> {
    // Code: base 0, limit 0xfffff, G=1, L=1 (64-bit), D=0, P=1, DPL 0, type execute/read.
    // Data: the same with D/B=1, L=0, type read/write.
    let gdt: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT_ADDR + 8 * i as u64)).context("writing the GDT")?;
    }
    let tables = [(PML4_ADDR, PDPT_ADDR | PRESENT_RW), (PDPT_ADDR, PD_ADDR | PRESENT_RW), (PD_ADDR, PRESENT_RW | PAGE_SIZE_2M)];
    for (at, entry) in tables {
        mem.write_obj(entry, GuestAddress(at)).context("writing the page tables")?;
    }
    Ok(())
}

/// What KVM_SET_SREGS must hold for the hidden part of a segment register to match the GDT.
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

/// `s` (from KVM_GET_SREGS) switched to 64-bit mode with the tables of [`write_tables`].
pub fn sregs(mut s: kvm_sregs) -> kvm_sregs {
    s.cs = segment(CODE_SELECTOR, true);
    let data = segment(DATA_SELECTOR, false);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = 3 * 8 - 1;
    s.cr3 = PML4_ADDR;
    s.cr4 = CR4_PAE;
    s.cr0 = CR0_PE | CR0_ET | CR0_PG;
    s.efer = EFER_LME | EFER_LMA;
    s
}
