#![no_main]
//! The ELF loading path (object headers, symbols, DWARF) on arbitrary bytes, then lookups
//! at the addresses of the symbols found. Seeded with real ELF files (see README in
//! BENCHMARKS.md), so the mutations reach DWARF parsing.

use libfuzzer_sys::fuzz_target;
use symbolizer::Symbolizer;

fuzz_target!(|data: &[u8]| {
    // from_elf takes a path (it maps the file): write the input to a per-process file.
    let path = std::env::temp_dir().join(format!("symbolizer-fuzz-elf-{}", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(sym) = Symbolizer::from_elf(&path) else { return };
    let _ = sym.warnings();
    for i in 0..64u64 {
        // Spread probes over the low address space where small ELFs live, plus kernel space.
        for base in [0u64, 0x1000, 0x40_0000, 0xffff_ffff_8100_0000] {
            let _ = sym.symbolize(base + i * 97);
        }
    }
});
