//! `--kaslr-offset auto` with only a vmlinux, on a real distribution kernel (Debian's
//! 6.1.0-47-cloud-amd64, fetched and cached by scripts/debian-vmlinux.sh; the test fails,
//! never skips, when it cannot be had).
//!
//! Exit-capable instructions are found by binutils `objdump -d` (a decoder independent of
//! ours), moved by a random 2 MiB-aligned slide, written as real-format `kvm_exit` ftrace
//! text with the reason each instruction causes, and imported. `report --kaslr-offset auto`
//! must recover the slide exactly and name every RIP's function as objdump's listing does;
//! with too few RIPs, or RIPs of another build, it must refuse.
mod common;

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn debian_vmlinux() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/debian-vmlinux.sh");
    let out = Command::new("bash").arg(&script).output().expect("run scripts/debian-vmlinux.sh");
    assert!(out.status.success(), "the Debian vmlinux cannot be had:\n{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// An exit-capable instruction in objdump's listing.
struct Insn {
    addr: u64,
    /// The VMX exit reason it causes.
    reason: &'static str,
    /// The function label it is under, without GCC's `.constprop.0`/`.isra.0`/`.part.0`/
    /// `.cold` suffixes (DWARF names the function without them, as addr2line does).
    function: String,
}

fn vmx_reason(mnemonic: &str, ops: &str) -> Option<&'static str> {
    Some(match mnemonic {
        "in" | "out" | "insb" | "insw" | "insl" | "outsb" | "outsw" | "outsl" => "IO_INSTRUCTION",
        "hlt" => "HLT",
        "rdmsr" => "MSR_READ",
        "wrmsr" => "MSR_WRITE",
        "cpuid" => "CPUID",
        "vmcall" => "VMCALL",
        "wbinvd" => "WBINVD",
        "xsetbv" => "XSETBV",
        "rdpmc" => "RDPMC",
        "invlpg" => "INVLPG",
        "pause" => "PAUSE_INSTRUCTION",
        "mov" if ops.contains("%cr") => "CR_ACCESS",
        "mov" if ops.contains("%db") => "DR_ACCESS",
        _ => return None,
    })
}

/// Exit-capable instructions objdump lists in `[start, stop)`, under function labels.
fn objdump_exit_insns(vmlinux: &Path, start: u64, stop: u64) -> Vec<Insn> {
    let out = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn", &format!("--start-address=0x{start:x}"), &format!("--stop-address=0x{stop:x}")])
        .arg(vmlinux)
        .output()
        .expect("objdump (binutils) runs");
    assert!(out.status.success());
    let mut function: Option<String> = None;
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(label) = line.strip_suffix(">:").and_then(|l| l.split_once(" <")).map(|(_, n)| n) {
            // `<name+0x1f0>:` is the window's start inside a function: not a label of ours.
            function = (!label.contains("+0x")).then(|| label.split('.').next().unwrap().to_string());
            continue;
        }
        let (Some(f), Some((addr, insn))) = (&function, line.trim_start().split_once(":\t")) else { continue };
        let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
        let mut words = insn.split_whitespace();
        let Some(mut m) = words.next() else { continue };
        if m == "rep" {
            m = words.next().unwrap_or(m);
        }
        let ops = words.collect::<Vec<_>>().join(" ");
        if let Some(reason) = vmx_reason(m, &ops) {
            if addr + 16 <= stop {
                found.push(Insn { addr, reason, function: f.clone() });
            }
        }
    }
    found
}

/// Real-format VMX ftrace text: each instruction exits once and is re-entered 1 us later.
fn ftrace(insns: &[Insn], shift: u64) -> String {
    let mut t = String::from("# tracer: nop\n#\n");
    for (i, insn) in insns.iter().enumerate() {
        let (s, us) = (100 + i / 100_000, (i % 100_000) * 10);
        let rip = insn.addr.wrapping_add(shift);
        writeln!(t, "       CPU 0/KVM-4242    (4240) [002] d..2.  {s}.{us:06}: kvm_exit: vcpu 0 reason {} rip 0x{rip:x} info1 0x0000000000000000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000", insn.reason).unwrap();
        writeln!(t, "       CPU 0/KVM-4242    (4240) [002] d..2.  {s}.{:06}: kvm_entry: vcpu 0, rip 0x{rip:x}", us + 1).unwrap();
    }
    t
}

/// Imports `text` and runs `report --vmlinux V --kaslr-offset auto --by rip --format json`.
fn report_auto(dir: &Path, tag: &str, text: &str, vmlinux: &Path) -> std::process::Output {
    let (txt, rec) = (dir.join(format!("{tag}.txt")), dir.join(format!("{tag}.kvmprof")));
    std::fs::write(&txt, text).unwrap();
    let o = run(KVMPROF, &["import", "ftrace", path_str(&txt), "-o", path_str(&rec)]);
    assert!(o.status.success(), "import failed: {}", stderr(&o));
    run(KVMPROF, &["report", path_str(&rec), "--vmlinux", path_str(vmlinux), "--kaslr-offset", "auto", "--by", "rip", "--format", "json", "--top", "100000"])
}

/// A few hundred exit instructions from windows across the kernel text.
fn sample(vmlinux: &Path) -> Vec<Insn> {
    let mut all = Vec::new();
    for start in [0xffff_ffff_8100_0000u64, 0xffff_ffff_8150_0000, 0xffff_ffff_81a0_0000] {
        all.extend(objdump_exit_insns(vmlinux, start, start + 0x10_0000));
    }
    all
}

#[test]
fn auto_slide_from_exits_recovers_the_slide_and_the_functions() {
    let vmlinux = debian_vmlinux();
    let insns = sample(&vmlinux);
    assert!(insns.len() >= 200, "objdump found only {} exit instructions", insns.len());
    // A random slide, printed so that a failure can be replayed.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    let slide = (1 + nanos % 400) << 21;
    eprintln!("{} instructions from objdump, slide 0x{slide:x}", insns.len());
    let dir = tempfile::tempdir().unwrap();
    let o = report_auto(dir.path(), "slid", &ftrace(&insns, slide), &vmlinux);
    assert!(o.status.success(), "report failed: {}", stderr(&o));
    let err = stderr(&o);
    eprint!("{err}");
    assert!(err.contains(&format!("kaslr: slide 0x{slide:x} from the exits: {n} of {n} exit RIPs", n = insns.len())), "{err}");
    let v = json(&stdout(&o));
    assert_eq!(rows(&v).len(), insns.len());
    for insn in &insns {
        let row = row_at(&v, "rip", &format!("0x{:x}", insn.addr + slide));
        assert_eq!(row["function"].as_str(), Some(insn.function.as_str()), "at link address 0x{:x}: {row}", insn.addr);
        assert_eq!(row["reason"], insn.reason);
    }
}

#[test]
fn auto_slide_refuses_thin_or_foreign_evidence() {
    let vmlinux = debian_vmlinux();
    let insns = sample(&vmlinux);
    let dir = tempfile::tempdir().unwrap();
    let refused = |tag: &str, text: &str, want: &str| {
        let o = report_auto(dir.path(), tag, text, &vmlinux);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{tag}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{tag}: one line: {err}");
        assert!(err.contains("cannot find the KASLR slide") && err.contains(want), "{tag}: {err}");
    };
    // A handful of RIPs is not enough.
    refused("thin", &ftrace(&insns[..4], 0x20_0000), "only 4 distinct exit RIPs");
    // Another build of the kernel: the same kinds of code at other offsets (not a 2 MiB
    // multiple away), so no aligned slide lines them up.
    refused("other-build", &ftrace(&insns, 0x20_0000 + 0x1234), "guest's kernel");
}
