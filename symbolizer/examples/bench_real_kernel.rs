//! Benchmark driver (not a test): what the real-kernel paths cost on a distribution
//! vmlinux. `bench-real-kernel VMLINUX` prints, as `key=value` lines:
//! - building the exit-instruction index (iced-x86 over every executable section), cold,
//!   and loading it from its cache file;
//! - finding the KASLR slide from 300 exit RIPs (taken from the index, moved by a slide);
//! - reading the ORC tables, and compiling the DWARF CFI (`.debug_frame`) into unwind rules.
//!
//! Run by scripts/bench-real-kernel.sh on Debian's vmlinux (scripts/debian-vmlinux.sh).
use std::path::Path;
use std::time::Instant;

use symbolizer::exit_insns::ExitInsnIndex;
use symbolizer::kaslr::{infer_slide, SlideEvidence};
use symbolizer::unwind::UnwindTable;

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: bench-real-kernel VMLINUX");
        std::process::exit(2);
    };
    let vmlinux = Path::new(&path);
    let fail = |e: symbolizer::SymbolizeError| -> ! {
        eprintln!("error: {e}");
        std::process::exit(1)
    };
    let _ = std::fs::remove_file(ExitInsnIndex::cache_path(vmlinux));
    let t = Instant::now();
    let index = ExitInsnIndex::for_vmlinux(vmlinux).unwrap_or_else(|e| fail(e));
    println!("index_build_s={:.3}", t.elapsed().as_secs_f64());
    println!("index_entries={}", index.entries.len());
    let t = Instant::now();
    let cached = ExitInsnIndex::for_vmlinux(vmlinux).unwrap_or_else(|e| fail(e));
    println!("index_cached_load_s={:.3}", t.elapsed().as_secs_f64());
    assert_eq!(cached, index);

    let slide = 0x1e40_0000u64;
    let step = (index.entries.len() / 300).max(1);
    let evidence: Vec<SlideEvidence> =
        index.entries.iter().step_by(step).take(300).map(|&(a, kind)| SlideEvidence { rip: a + slide, kind }).collect();
    let t = Instant::now();
    let est = infer_slide(&index, &evidence).expect("the slide is found");
    println!("slide_search_s={:.4}", t.elapsed().as_secs_f64());
    println!("slide_rips={} slide_matched={} slide_ok={}", est.rips, est.matched, est.slide == slide as i64);

    let t = Instant::now();
    let orc = UnwindTable::from_orc(vmlinux).unwrap_or_else(|e| fail(e)).map_or(0, |t| t.entries.len());
    println!("orc_read_s={:.3} orc_entries={orc}", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let cfi = UnwindTable::from_cfi(vmlinux).unwrap_or_else(|e| fail(e)).map_or(0, |t| t.entries.len());
    println!("cfi_compile_s={:.3} cfi_rules={cfi}", t.elapsed().as_secs_f64());
}
