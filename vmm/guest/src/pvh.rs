//! Booting under QEMU (`qemu-system-x86_64 -enable-kvm -kernel guest.elf -append "..."`)
//! through the PVH ELF note: QEMU's loader puts the ELF's segments at their physical
//! addresses and its `pvh.bin` option ROM enters `_pvh_start` in 32-bit protected mode,
//! paging off, with EBX = the physical address of an `hvm_start_info`. The 32-bit code here
//! builds identity-mapped page tables over the first 4 GiB (2 MiB pages), enters long mode
//! with the same GDT selectors as tinyvmm's (code 0x08, data 0x10) and calls [`pvh_main`],
//! which reads the workload from the command line and runs the same code as tinyvmm's
//! `kmain`. Guest-virtual == guest-physical == link address, as under tinyvmm, so RIPs and
//! frame chains read the same way on both VMMs.

use crate::abi::*;
use crate::batch::pio_batch;
use crate::cmdline;
use crate::io::inb;
use crate::{guest_exit, kprint, platform};
use core::arch::global_asm;

// `XEN_ELFNOTE_PHYS32_ENTRY`: the note QEMU's `-kernel` looks for in an ELF that is neither
// a bzImage nor multiboot.
global_asm!(
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4",  // namesz: "Xen\0"
    ".long 4",  // descsz
    ".long 18", // XEN_ELFNOTE_PHYS32_ENTRY
    ".asciz \"Xen\"",
    ".balign 4",
    ".long _pvh_start",
    ".popsection",
);

global_asm!(
    ".pushsection .text.pvh, \"ax\"",
    ".code32",
    ".global _pvh_start",
    ".type _pvh_start, @function",
    "_pvh_start:",
    "cli",
    "mov esi, ebx",
    // Zero .bss (page tables and stack included): QEMU's loader zero-fills it, but the
    // code must not depend on a loader detail.
    "mov edi, offset __bss_start",
    "mov ecx, offset __guest_end",
    "sub ecx, edi",
    "shr ecx, 2",
    "xor eax, eax",
    "cld",
    "rep stosd",
    // PML4[0] -> PDPT; PDPT[0..4] -> four page directories of 2 MiB pages.
    "mov eax, offset pvh_pdpt",
    "or eax, 3",
    "mov dword ptr [pvh_pml4], eax",
    "mov eax, offset pvh_pd",
    "or eax, 3",
    "mov dword ptr [pvh_pdpt], eax",
    "add eax, 4096",
    "mov dword ptr [pvh_pdpt + 8], eax",
    "add eax, 4096",
    "mov dword ptr [pvh_pdpt + 16], eax",
    "add eax, 4096",
    "mov dword ptr [pvh_pdpt + 24], eax",
    "mov edi, offset pvh_pd",
    "mov eax, 0x83", // present, writable, 2 MiB
    "mov ecx, 2048",
    "3:",
    "mov dword ptr [edi], eax",
    "add eax, 0x200000",
    "add edi, 8",
    "dec ecx",
    "jnz 3b",
    "mov eax, cr4",
    "or eax, 0x20", // PAE
    "mov cr4, eax",
    "mov eax, offset pvh_pml4",
    "mov cr3, eax",
    "mov ecx, 0xc0000080", // EFER
    "rdmsr",
    "or eax, 0x100", // LME
    "wrmsr",
    "mov eax, cr0",
    "or eax, 0x80000001", // PG | PE
    "mov cr0, eax",
    "lgdt [pvh_gdt_desc]",
    // push 0x08; push imm32 pvh_long; retf (spelled out: the assembler picks a 16-bit push)
    ".byte 0x6a, 0x08",
    ".byte 0x68",
    ".long pvh_long",
    ".byte 0xcb",
    ".code64",
    "pvh_long:",
    "mov ax, 0x10",
    "mov ds, ax",
    "mov es, ax",
    "mov ss, ax",
    "mov fs, ax",
    "mov gs, ax",
    "lea rsp, [rip + pvh_stack_top]",
    "xor ebp, ebp",
    "mov edi, esi",
    "call pvh_main",
    "4: hlt",
    "jmp 4b",
    ".size _pvh_start, . - _pvh_start",
    ".balign 8",
    "pvh_gdt:",
    ".quad 0",
    ".quad 0x00af9b000000ffff",
    ".quad 0x00cf93000000ffff",
    "pvh_gdt_desc:",
    ".word 23",
    ".long pvh_gdt",
    ".popsection",
    ".pushsection .bss.pvh, \"aw\", @nobits",
    ".balign 4096",
    "pvh_pml4: .space 4096",
    "pvh_pdpt: .space 4096",
    "pvh_pd: .space 16384",
    ".balign 16",
    ".space 65536",
    "pvh_stack_top:",
    ".popsection",
);

const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Longest command line read.
const CMDLINE_MAX: usize = 1024;

/// Reads `T` at a physical address (identity-mapped below 4 GiB).
///
/// # Safety
///
/// `pa .. pa + size_of::<T>()` must be below 4 GiB (mapped by `_pvh_start`); any bit pattern
/// must be a valid `T`.
unsafe fn phys<T: Copy>(pa: u64) -> T {
    // SAFETY: the caller's contract; read_unaligned because firmware tables are packed.
    unsafe { core::ptr::read_unaligned(pa as *const T) }
}

fn below_4g(pa: u64, len: u64) -> bool {
    pa != 0 && pa.checked_add(len).is_some_and(|e| e <= 1 << 32)
}

/// The ACPI PM timer port from the FADT (`PM_TMR_BLK`), found through the RSDP (from the
/// start info, else the BIOS area) and the RSDT.
fn acpi_pm_timer(rsdp_hint: u64) -> Option<u16> {
    let rsdp = if below_4g(rsdp_hint, 20) { rsdp_hint } else { find_rsdp()? };
    // SAFETY: below_4g checked above (find_rsdp only returns addresses in the BIOS area).
    let rsdt = unsafe { phys::<u32>(rsdp + 16) } as u64;
    if !below_4g(rsdt, 36) {
        return None;
    }
    // SAFETY: the RSDT header is below 4 GiB (checked); u32 has no invalid values.
    let len = unsafe { phys::<u32>(rsdt + 4) } as u64;
    if len < 36 || !below_4g(rsdt, len) {
        return None;
    }
    for i in 0..(len - 36) / 4 {
        // SAFETY: inside the RSDT, checked below 4 GiB above.
        let t = unsafe { phys::<u32>(rsdt + 36 + 4 * i) } as u64;
        // SAFETY: checked below 4 GiB before each read; [u8; 4] and u32 take any bits.
        if below_4g(t, 80) && unsafe { phys::<[u8; 4]>(t) } == *b"FACP" {
            // SAFETY: as above: the FADT's first 80 bytes are below 4 GiB.
            let port = unsafe { phys::<u32>(t + 76) };
            return u16::try_from(port).ok().filter(|p| *p != 0);
        }
    }
    None
}

fn find_rsdp() -> Option<u64> {
    (0xe_0000u64..0x10_0000).step_by(16).find(|&a| {
        // SAFETY: the BIOS area, identity-mapped; [u8; 8] takes any bits.
        let sig: [u8; 8] = unsafe { phys(a) };
        sig == *b"RSD PTR "
    })
}

/// Top of RAM from the start info's E820-style memory map (version 1), 0 if absent.
fn ram_size(info: u64, version: u32) -> u64 {
    if version < 1 {
        return 0;
    }
    // SAFETY: the start info (56 bytes in version 1) is below 4 GiB (checked by the caller).
    let (map, n) = unsafe { (phys::<u64>(info + 40), phys::<u32>(info + 48)) };
    let mut top = 0;
    for i in 0..u64::from(n.min(128)) {
        let e = map + 24 * i;
        if !below_4g(e, 24) {
            break;
        }
        // SAFETY: checked below 4 GiB; plain integers.
        let (addr, size, kind) = unsafe { (phys::<u64>(e), phys::<u64>(e + 8), phys::<u32>(e + 16)) };
        if kind == 1 {
            top = top.max(addr.saturating_add(size));
        }
    }
    top
}

/// True if tinyvmm's batching doorbell answers: a queue one entry over the limit must be
/// refused with `BATCH_ERR_COUNT`. Elsewhere (QEMU: port 0x510 is fw_cfg's selector, which
/// ignores the write) EAX comes back unchanged.
#[inline(never)]
fn doorbell_present() -> bool {
    // SAFETY: a count over BATCH_MAX is refused by tinyvmm without touching memory, and no
    // other VMM reads guest memory on this port; the address is never dereferenced.
    unsafe { pio_batch(0, BATCH_MAX as u32 + 1) == BATCH_ERR_COUNT }
}

/// Prints `@@waiting` and polls COM1's line status until a byte arrives. Between polls it
/// computes for ~0.1 s without exits, so a profiler attaching meanwhile has its guest memory
/// map in place before the next exit.
#[inline(never)]
fn wait_for_serial_byte() {
    kprint!("@@waiting\n");
    while inb(PORT_COM1 + 5) & 1 == 0 {
        for _ in 0..30_000 {
            core::hint::spin_loop();
        }
    }
    inb(PORT_COM1);
}

/// The Rust entry of a PVH boot, called by `_pvh_start` with the start info's address.
#[no_mangle]
pub extern "C" fn pvh_main(info: u32) -> ! {
    let info = u64::from(info);
    platform::set_exit_port(cmdline::DEFAULT_EXIT_PORT);
    platform::set_poll_lsr(true);
    let magic = if below_4g(info, 56) {
        // SAFETY: the start info's first 56 bytes are below 4 GiB (checked); u32 takes any bits.
        unsafe { phys::<u32>(info) }
    } else {
        0
    };
    if magic != START_INFO_MAGIC {
        kprint!("@@result {{\"status\":\"error\",\"error\":\"no PVH start info\"}}\n");
        guest_exit(2);
    }
    // SAFETY: as above.
    let (version, cmdline_pa, rsdp) = unsafe { (phys::<u32>(info + 4), phys::<u64>(info + 24), phys::<u64>(info + 32)) };
    let mut text: &[u8] = &[];
    if below_4g(cmdline_pa, CMDLINE_MAX as u64) {
        // SAFETY: CMDLINE_MAX bytes from cmdline_pa are below 4 GiB, identity-mapped RAM
        // QEMU wrote and nothing else writes; the slice ends at the first NUL.
        let all = unsafe { core::slice::from_raw_parts(cmdline_pa as *const u8, CMDLINE_MAX) };
        text = &all[..all.iter().position(|b| *b == 0).unwrap_or(CMDLINE_MAX)];
    }
    let mut c = match cmdline::parse(text) {
        Ok(c) => c,
        Err(word) => {
            kprint!("@@result {{\"status\":\"error\",\"error\":\"bad command line word: {}\"}}\n", core::str::from_utf8(word).unwrap_or("?"));
            guest_exit(2);
        }
    };
    platform::set_exit_port(c.exit_port);
    let (pm, how) = match c.pmtmr {
        Some(p) => (p, "command line"),
        None => match acpi_pm_timer(rsdp) {
            Some(p) => (p, "ACPI FADT"),
            None => (PORT_PMTMR, "default"),
        },
    };
    platform::set_pmtmr_port(pm);
    c.params.ram_size = ram_size(info, version);
    kprint!("kvmprof-guest: PVH boot, PM timer at {pm:#x} ({how}), exit port {:#x}\n", c.exit_port);
    if c.params.flags & FLAG_BATCH_PIO != 0 && !doorbell_present() {
        c.params.flags &= !FLAG_BATCH_PIO;
        kprint!("kvmprof-guest: tinyvmm's batching doorbell (port {PORT_DOORBELL:#x}) is absent: plain port I/O\n");
    }
    if c.wait_serial {
        wait_for_serial_byte();
    }
    crate::boot(&c.params)
}
