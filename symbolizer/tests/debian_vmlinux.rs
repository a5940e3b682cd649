//! The real-kernel paths on a real distribution kernel: Debian's
//! `linux-image-6.1.0-47-cloud-amd64` vmlinux (ORC unwinder, no frame pointers), fetched
//! and cached by `scripts/debian-vmlinux.sh`. These tests fail, never skip, when it cannot
//! be had.
//!
//! - the exit-instruction index agrees with binutils `objdump -d`, an independent decoder,
//!   instruction for instruction, over windows of the kernel text;
//! - the ORC table, and the rules compiled from the DWARF CFI (`.debug_frame`), say what
//!   every function entry must: CFA = SP + 8, and one slot more after each leading push
//!   (CFA = SP + 16 right after a first `push %rbp`).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use symbolizer::exit_insns::{ExitInsnIndex, ExitInsnKind};
use symbolizer::unwind::{CfaBase, FrameKind, UnwindSource, UnwindTable};

fn debian_vmlinux() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/debian-vmlinux.sh");
    let out = Command::new("bash").arg(&script).output().expect("run scripts/debian-vmlinux.sh");
    assert!(out.status.success(), "the Debian vmlinux cannot be had:\n{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// objdump's mnemonic (AT&T, without size suffix games) → the kind an exit of it has.
fn objdump_kind(line: &str) -> Option<ExitInsnKind> {
    use ExitInsnKind::*;
    let insn = line.split('\t').nth(1)?.trim();
    let mut words = insn.split_whitespace();
    let mut m = words.next()?;
    if matches!(m, "rep" | "repz" | "repnz" | "repe" | "repne" | "data16" | "cs" | "ds") {
        m = words.next().unwrap_or(m);
    }
    let ops = words.collect::<Vec<_>>().join(" ");
    Some(match m {
        "in" | "out" | "insb" | "insw" | "insl" | "outsb" | "outsw" | "outsl" => PortIo,
        "hlt" => Hlt,
        "rdmsr" | "wrmsr" => Msr,
        "cpuid" => Cpuid,
        "vmcall" | "vmmcall" => Hypercall,
        "xsetbv" => Xsetbv,
        "wbinvd" => Wbinvd,
        "mwait" | "monitor" | "mwaitx" | "monitorx" => Mwait,
        "rdpmc" => Rdpmc,
        "invlpg" => Invlpg,
        "pause" => Pause,
        "mov" if ops.contains("%cr") || ops.contains("%db") => CrDr,
        _ => return None,
    })
}

/// Exit-capable instructions objdump finds in `[start, stop)`, from the first function label
/// on (objdump starts a window wherever it is told, possibly mid-instruction).
fn objdump_exit_insns(vmlinux: &Path, start: u64, stop: u64) -> (u64, BTreeSet<(u64, ExitInsnKind)>) {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", &format!("--start-address=0x{start:x}"), &format!("--stop-address=0x{stop:x}")])
        .arg(vmlinux)
        .output()
        .expect("objdump (binutils) runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut first_label = None;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        // A function's own label (`<name>:`), not the window's start (`<name+0x1f0>:`).
        if line.ends_with(">:") {
            if line.contains("+0x") {
                continue;
            }
            let addr = u64::from_str_radix(line.split_whitespace().next().unwrap(), 16).unwrap();
            first_label.get_or_insert(addr);
            continue;
        }
        let (Some(from), Some((addr, _))) = (first_label, line.trim_start().split_once(':')) else { continue };
        let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
        if let Some(kind) = objdump_kind(line) {
            // The last instruction may be cut by the window's end.
            if addr >= from && addr + 16 <= stop {
                found.insert((addr, kind));
            }
        }
    }
    (first_label.expect("a function label in the window"), found)
}

#[test]
fn exit_instruction_index_matches_objdump() {
    let vmlinux = debian_vmlinux();
    let t = std::time::Instant::now();
    let index = ExitInsnIndex::build(&vmlinux, &std::fs::read(&vmlinux).unwrap()).unwrap();
    eprintln!("decoded {} exit-capable instructions in {:?}", index.entries.len(), t.elapsed());
    assert!(index.entries.len() > 1000, "{}", index.entries.len());
    let mut compared = 0;
    // Windows across .text and one in .init.text.
    for start in [0xffff_ffff_8100_0000u64, 0xffff_ffff_8140_0000, 0xffff_ffff_8180_0000, 0xffff_ffff_81c0_0000, 0xffff_ffff_8304_c000] {
        let stop = start + 0x10_0000;
        let (from, want) = objdump_exit_insns(&vmlinux, start, stop);
        let got: BTreeSet<(u64, ExitInsnKind)> =
            index.entries.iter().copied().filter(|e| e.0 >= from && e.0 + 16 <= stop).collect();
        let missing: Vec<_> = want.difference(&got).take(5).collect();
        let extra: Vec<_> = got.difference(&want).take(5).collect();
        assert!(missing.is_empty() && extra.is_empty(), "window 0x{start:x}: objdump only {missing:x?}, ours only {extra:x?}");
        compared += want.len();
    }
    assert!(compared > 300, "only {compared} exit instructions in the windows");
    eprintln!("{compared} exit instructions agree with objdump");
}

/// A deterministic stream of numbers (the test must not change from run to run).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn orc_rules_at_function_entries() {
    let vmlinux = debian_vmlinux();
    let data = std::fs::read(&vmlinux).unwrap();
    let elf = object::File::parse(&*data).unwrap();
    let text = elf.section_by_name(".text").unwrap();
    let (text_start, text_bytes) = (text.address(), text.data().unwrap());
    let t = std::time::Instant::now();
    let orc = UnwindTable::from_orc(&vmlinux).unwrap().expect("Debian's kernel is built with ORC");
    eprintln!("{} ORC entries read in {:?}", orc.entries.len(), t.elapsed());
    let t = std::time::Instant::now();
    let cfi = UnwindTable::from_cfi(&vmlinux).unwrap().expect("the -dbg vmlinux has .debug_frame");
    eprintln!("{} CFI rules compiled from .debug_frame in {:?}", cfi.entries.len(), t.elapsed());
    assert_eq!((orc.source, cfi.source), (UnwindSource::Orc, UnwindSource::Cfi));

    let mut funcs: Vec<(u64, u64)> = elf
        .symbols()
        // `foo.cold` is the unlikely part of `foo`, entered by a jump in the middle of
        // foo's frame: not a function entry.
        .filter(|s| s.kind() == SymbolKind::Text && s.size() >= 16 && s.section_index() == Some(text.index()))
        .filter(|s| !s.name().unwrap_or("").contains(".cold"))
        .map(|s| (s.address(), s.size()))
        .collect();
    funcs.sort_unstable();
    funcs.dedup();
    let mut rng = Lcg(0x6b766d70726f66);
    let (mut at_entry, mut push_checks, mut after_push_rbp, mut cfi_uncovered) = (0, 0, 0, 0);
    for _ in 0..1000 {
        let (addr, size) = funcs[rng.next() as usize % funcs.len()];
        // Hand-written assembly has ORC (objtool) but no CFI: there the CFI table says End
        // (a stack walker falls back to frame pointers) and the function is not compared.
        if cfi.rule_at(addr).is_none_or(|r| r.kind == FrameKind::End) {
            cfi_uncovered += 1;
            continue;
        }
        for table in [&orc, &cfi] {
            let rule = table.rule_at(addr).expect("a rule for every function");
            assert_eq!((rule.cfa_base, rule.cfa_offset, rule.kind), (CfaBase::Sp, 8, FrameKind::Call), "{:?} at 0x{addr:x}", table.source);
        }
        at_entry += 1;
        // The prologue's leading pushes: after the k-th, the return address is k slots further
        // (CFA = SP + 8 + 8k); `push %rbp` first of all is the issue's own case.
        let off = (addr - text_start) as usize;
        let body = &text_bytes[off..off + size as usize];
        let mut pushes = 0;
        for insn in Decoder::with_ip(64, body, addr, DecoderOptions::NONE).iter() {
            if insn.mnemonic() == Mnemonic::Push && insn.op0_kind() == OpKind::Register {
                pushes += 1;
                for table in [&orc, &cfi] {
                    let rule = table.rule_at(insn.next_ip()).unwrap();
                    let want = (CfaBase::Sp, 8 + 8 * pushes);
                    assert_eq!((rule.cfa_base, rule.cfa_offset), want, "{:?} after push {:?} at 0x{:x}", table.source, insn.op0_register(), insn.ip());
                }
                push_checks += 1;
                after_push_rbp += usize::from(pushes == 1 && insn.op0_register() == Register::RBP);
                continue;
            }
            // Only the leading run of pushes (after the `__fentry__` nop): a later
            // `mov %rsp,%rbp` moves the CFA to BP, and other code moves SP.
            if !matches!(insn.mnemonic(), Mnemonic::Nop | Mnemonic::Endbr64) {
                break;
            }
        }
    }
    eprintln!("{at_entry} function entries, {push_checks} prologue pushes ({after_push_rbp} functions pushing %rbp first) checked; {cfi_uncovered} functions without CFI");
    assert!(cfi_uncovered <= 50, "{cfi_uncovered} of 1000 functions have no CFI");
    assert!(after_push_rbp >= 25 && push_checks >= 100, "too few prologues: {after_push_rbp} `push %rbp` first, {push_checks} pushes");
}
