//! The bundled guest's two builds (`--guest-variant fp|nofp`), checked with binutils (an
//! independent reader): the fp build's functions set up a frame pointer (`push %rbp; mov
//! %rsp,%rbp`), the nofp build's do not and have `.eh_frame` entries (FDEs) covering them.

mod common;
use common::*;

/// `objdump -d` of `elf`'s function whose name contains `name`: its instructions, in order.
fn instructions(elf: &std::path::Path, name: &str) -> Vec<String> {
    let out = std::process::Command::new("objdump").args(["-d", "--no-show-raw-insn"]).arg(elf).output().expect("objdump (binutils) is needed");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = text.lines().position(|l| l.ends_with(">:") && l.contains(name)).unwrap_or_else(|| panic!("no function {name}"));
    text.lines()
        .skip(start + 1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split('\t').nth(1).map(|i| i.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect()
}

fn sets_up_frame_pointer(insns: &[String]) -> bool {
    insns.windows(2).take(8).any(|w| w[0] == "push %rbp" && w[1] == "mov %rsp,%rbp")
}

/// Start addresses of the FDEs of `.eh_frame` (`readelf --debug-dump=frames`).
fn fde_ranges(elf: &std::path::Path) -> Vec<(u64, u64)> {
    let out = std::process::Command::new("readelf").arg("--debug-dump=frames").arg(elf).output().expect("readelf (binutils) is needed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" FDE "))
        .filter_map(|l| {
            let pc = l.split("pc=").nth(1)?;
            let (a, b) = pc.split_once("..")?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
        })
        .collect()
}

fn symbol_address(elf: &std::path::Path, name: &str) -> u64 {
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(elf).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let sym = file.symbols().find(|s| s.name().is_ok_and(|n| n.contains(name))).unwrap_or_else(|| panic!("no symbol {name}"));
    sym.address()
}

#[test]
fn nofp_build_has_no_frame_pointers_and_has_unwind_tables() {
    let t = tempfile::tempdir().unwrap();
    let fp = t.path().join("fp.elf");
    let nofp = t.path().join("nofp.elf");
    for (variant, path) in [("fp", &fp), ("nofp", &nofp)] {
        let out = tinyvmm().args(["guest-elf", "--guest-variant", variant, "-o"]).arg(path).output().unwrap();
        assert!(out.status.success(), "guest-elf --guest-variant {variant}");
    }
    assert_eq!(std::fs::read(&fp).unwrap(), vmm::GUEST_ELF, "fp is the default build");
    assert_eq!(std::fs::read(&nofp).unwrap(), vmm::GUEST_NOFP_ELF);
    let nofp_fdes = fde_ranges(&nofp);
    for f in ["ide_output_data", "ide_do_rw_disk", "disk_write_workload", "4boot17h"] {
        assert!(sets_up_frame_pointer(&instructions(&fp, f)), "fp build: {f} sets up no frame pointer");
        assert!(!sets_up_frame_pointer(&instructions(&nofp, f)), "nofp build: {f} sets up a frame pointer");
        let at = symbol_address(&nofp, f);
        assert!(nofp_fdes.iter().any(|(a, b)| *a <= at && at < *b), "nofp build: no .eh_frame FDE covers {f} at {at:#x}");
    }
}
