//! Guest stacks live (`record --stack-depth`): the bundled guest's two builds, with frame
//! pointers (`--guest-variant fp`) and without, with .eh_frame unwind tables (`nofp`), under
//! real `kvmprof record`, checked against the call chains of the guest's source
//! (vmm/guest/src: kmain -> boot -> workloads::run -> disk_write_workload -> ide_do_rw_disk ->
//! ide_output_data, whose `rep outsw` makes 256 port writes to 0x1f0 per sector).
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;

fn tinyvmm() -> PathBuf {
    let p = target_bin("tinyvmm");
    assert!(p.exists(), "{} is missing: build it with `cargo build --release --workspace --bins`", p.display());
    p
}

const SECTORS: u64 = 4;

/// One row of `report --by stack`: (exiting function, caller functions innermost first, port,
/// direction) -> (count, method).
type Stacks = BTreeMap<(String, Vec<String>, Option<String>, Option<String>), (u64, String)>;

/// Records the disk-write workload of guest build `variant` with `--stack-depth 4` and its own
/// ELF as the unwind table's source; returns the report's stack rows and the folded stacks.
fn record_stacks(dir: &Path, variant: &str) -> (Stacks, String) {
    let vmm = tinyvmm();
    let elf = dir.join(format!("{variant}.elf"));
    let o = run(path_str(&vmm), &["guest-elf", "--guest-variant", variant, "-o", path_str(&elf)]);
    assert!(o.status.success(), "tinyvmm guest-elf: {}", stderr(&o));
    let disk = dir.join(format!("{variant}.img"));
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let out = dir.join(format!("{variant}.kvmprof"));
    let count = SECTORS.to_string();
    let o = run(
        KVMPROF,
        &[
            "record", "-o", path_str(&out), "--stack-depth", "4", "--vmlinux", path_str(&elf), "--",
            path_str(&vmm), "run", "--guest-variant", variant, "--workload", "disk-write", "--count", &count,
            "--disk", path_str(&disk), "--skip-pmtmr-calibration", "--quiet",
        ],
    );
    assert!(o.status.success(), "record ({variant}) failed: {}", stderr(&o));
    let report = report_json(&out, &["--by", "stack", "--vmlinux", path_str(&elf)]);
    let mut stacks = Stacks::new();
    for r in report["rows"].as_array().unwrap() {
        let function = r["function"].as_str().unwrap_or("[unknown]").to_string();
        let frames = r["stack"].as_array().unwrap_or_else(|| panic!("{variant}: an exit without a stack: {r:#}"));
        let callers: Vec<String> = frames.iter().map(|f| f["function"].as_str().unwrap_or("[unknown]").to_string()).collect();
        let key = (function, callers, r["port"].as_str().map(String::from), r["direction"].as_str().map(String::from));
        let method = r["stack_method"].as_str().unwrap().to_string();
        let e = stacks.entry(key).or_insert((0, method));
        e.0 += r["count"].as_u64().unwrap();
    }
    let o = run(KVMPROF, &["report", path_str(&out), "--by", "stack", "--vmlinux", path_str(&elf), "--format", "folded"]);
    assert!(o.status.success(), "report --format folded: {}", stderr(&o));
    (stacks, stdout(&o))
}

/// The guest's functions end in these names (crate paths before them).
fn ends(names: &[String], suffixes: &[&str]) -> bool {
    names.len() == suffixes.len() && names.iter().zip(suffixes).all(|(n, s)| n.ends_with(s))
}

#[test]
fn nofp_guest_stacks_match_the_frame_pointer_build() {
    require_live();
    let dir = tmpdir();
    let (fp, fp_folded) = record_stacks(dir.path(), "fp");
    let (nofp, nofp_folded) = record_stacks(dir.path(), "nofp");
    for (variant, stacks, folded, method) in [("fp", &fp, &fp_folded, "frame_pointer"), ("nofp", &nofp, &nofp_folded, "table")] {
        // Zero [unknown]: every exit has a stack, every frame a function.
        for ((function, callers, ..), _) in stacks.iter() {
            assert!(function != "[unknown]" && !callers.iter().any(|c| c == "[unknown]"), "{variant}: unknown frame in {function} <- {callers:?}");
        }
        // The data writes: exact count, the source's call chain, walked by the build's method.
        let data: Vec<_> = stacks.iter().filter(|((f, ..), _)| f.ends_with("::ide_output_data")).collect();
        assert_eq!(data.len(), 1, "{variant}: ide_output_data has one stack: {data:?}");
        let ((_, callers, port, dir_), (count, m)) = data[0];
        assert!(
            ends(callers, &["::ide_do_rw_disk", "::disk_write_workload", "::workloads::run", "::boot"]),
            "{variant}: ide_output_data's callers are {callers:?}"
        );
        assert_eq!((port.as_deref(), dir_.as_deref()), (Some("0x1f0"), Some("out")));
        assert_eq!(*count, 256 * SECTORS, "{variant}: data writes");
        assert_eq!(m, method, "{variant}: method of the data writes' stack");
        // ide_do_rw_disk's own register accesses (12 writes per sector and the status reads;
        // one row, several ports): called from disk_write_workload.
        let regs: u64 = stacks
            .iter()
            .filter(|((f, c, ..), _)| f.ends_with("::ide_do_rw_disk") && ends(c, &["::disk_write_workload", "::workloads::run", "::boot", "kmain"]))
            .map(|(_, (n, _))| n)
            .sum();
        assert!(regs >= 12 * SECTORS, "{variant}: {regs} IDE register writes with the source's stack, expected at least {}", 12 * SECTORS);
        // The folded stacks carry the whole chain, outermost first.
        let line = folded.lines().find(|l| l.contains("::ide_output_data;")).unwrap_or_else(|| panic!("{variant}: no ide_output_data in\n{folded}"));
        assert!(line.contains("::boot;tinyvmm_guest::workloads::run;tinyvmm_guest::workloads::disk_write_workload;tinyvmm_guest::ide::ide_do_rw_disk;tinyvmm_guest::ide::ide_output_data;"), "{line}");
        assert!(line.ends_with(&format!(" {}", 256 * SECTORS)), "{line}");
    }
    // Both builds give the IDE driver the same stacks and counts.
    let ide = |s: &Stacks| -> BTreeMap<_, u64> { s.iter().filter(|((f, ..), _)| f.contains("::ide::")).map(|(k, (n, _))| (k.clone(), *n)).collect() };
    assert_eq!(ide(&fp), ide(&nofp), "the IDE driver's stacks differ between the fp and nofp builds");
}

#[test]
fn stack_depth_out_of_range_is_one_line() {
    let dir = tmpdir();
    let out = dir.path().join("x.kvmprof");
    for bad in ["0", "9"] {
        let o = run(KVMPROF, &["record", "-o", path_str(&out), "--stack-depth", bad, "--", "true"]);
        assert_one_line_error(&o, "--stack-depth");
    }
}

/// `--kaslr-offset auto` with only the ELF: the slide is found from the first exits (0 for this
/// guest, which is not moved), and from then on stacks are walked by the unwind table. The
/// exits before have their caller only; every exit is counted once either way.
#[test]
fn the_slide_for_the_unwind_table_is_found_from_the_first_exits() {
    require_live();
    let dir = tmpdir();
    let vmm = tinyvmm();
    let elf = dir.path().join("nofp.elf");
    let o = run(path_str(&vmm), &["guest-elf", "--guest-variant", "nofp", "-o", path_str(&elf)]);
    assert!(o.status.success(), "tinyvmm guest-elf: {}", stderr(&o));
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(4 << 20).unwrap();
    let out = dir.path().join("auto.kvmprof");
    const MANY: u64 = 200;
    let o = run(
        KVMPROF,
        &[
            "record", "-o", path_str(&out), "--stack-depth", "4", "--vmlinux", path_str(&elf), "--kaslr-offset", "auto", "--",
            path_str(&vmm), "run", "--guest-variant", "nofp", "--workload", "disk-write", "--count", &MANY.to_string(),
            "--disk", path_str(&disk), "--skip-pmtmr-calibration", "--quiet",
        ],
    );
    assert!(o.status.success(), "record failed: {}", stderr(&o));
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let info = &rec["meta"]["stacks"];
    assert_eq!(info["slide"], 0, "{info:#}");
    let how = info["slide_from_exits"].as_str().unwrap_or_else(|| panic!("no slide_from_exits in {info:#}"));
    assert!(how.starts_with("slide 0x0 found from the first"), "{how}");
    let before = info["stacks_from_exit"].as_u64().unwrap_or_else(|| panic!("no stacks_from_exit in {info:#}"));
    assert!(before > 0, "{info:#}");

    let report = report_json(&out, &["--by", "stack", "--vmlinux", path_str(&elf)]);
    let (mut with, mut without, mut data_with) = (0u64, 0u64, 0u64);
    for r in report["rows"].as_array().unwrap() {
        let n = r["count"].as_u64().unwrap();
        let Some(frames) = r["stack"].as_array() else {
            without += n;
            continue;
        };
        with += n;
        let callers: Vec<String> = frames.iter().map(|f| f["function"].as_str().unwrap_or("[unknown]").to_string()).collect();
        assert!(!callers.iter().any(|c| c == "[unknown]"), "an unknown frame after the slide was found: {r:#}");
        if r["function"].as_str().is_some_and(|f| f.ends_with("::ide_output_data")) {
            assert!(ends(&callers, &["::ide_do_rw_disk", "::disk_write_workload", "::workloads::run", "::boot"]), "{callers:?}");
            assert_eq!(r["stack_method"], "table", "{r:#}");
            data_with += n;
        }
    }
    let total = rec["exits"].as_array().unwrap().iter().map(|e| e["count"].as_u64().unwrap()).sum::<u64>();
    assert_eq!(with + without, total, "every exit is in one row");
    // Stacks start after the slide is found: every exit before has none. (Exits after it
    // that were already in progress may have none too.)
    assert!(without >= before, "{without} exits without a stack, {before} before the stacks started");
    // Most of the 256 x MANY data writes come after the first half second.
    assert!(data_with > 0 && data_with <= 256 * MANY, "{data_with} data writes with a stack");
    let o = run(KVMPROF, &["report", path_str(&out), "--by", "stack", "--vmlinux", path_str(&elf)]);
    assert!(stdout(&o).contains("found from the first"), "{}", stdout(&o));
}
