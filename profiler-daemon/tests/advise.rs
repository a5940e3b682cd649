//! `kvmprof advise` (issue 12): runs of successive I/O exits found in the kernel while recording,
//! on real tinyvmm and kvm-exit-loop guests, and the same runs through `kvmprof import`.
//! Live: root, KVM, BPF, tracefs (fail, never skip).
mod common;

use std::fmt::Write as _;
use std::path::Path;

use common::*;
use profiler_daemon::model::{recording, Direction, Profile};

const SECTORS: u64 = 100;

fn tinyvmm() -> String {
    target_bin("tinyvmm").display().to_string()
}

/// Records `tinyvmm run --workload disk-write` of SECTORS sectors (with `extra` flags).
fn record_disk(dir: &Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let img = dir.join(format!("{name}.img"));
    std::fs::write(&img, vec![0u8; (SECTORS as usize + 8) * 512]).unwrap();
    let out = dir.join(format!("{name}.kvmprof"));
    let n = SECTORS.to_string();
    let mut args = vec!["record", "-o", path_str(&out), "--", &tinyvmm(), "run", "--workload", "disk-write", "--count", &n, "--disk", path_str(&img), "--quiet"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(KVMPROF, &a);
    assert!(o.status.success(), "record failed: {}", stderr(&o));
    out
}

fn guest_elf(dir: &Path) -> std::path::PathBuf {
    let elf = dir.join("guest.elf");
    let o = run(&tinyvmm(), &["guest-elf", "-o", path_str(&elf)]);
    assert!(o.status.success(), "guest-elf: {}", stderr(&o));
    elf
}

fn advise_json(file: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["advise", path_str(file), "--format", "json"];
    a.extend_from_slice(args);
    let o = run(KVMPROF, &a);
    assert!(o.status.success(), "advise failed: {}", stderr(&o));
    json(&stdout(&o))
}

fn candidates(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v["candidates"].as_array().expect("candidates")
}

fn ports(c: &serde_json::Value) -> Vec<u64> {
    c["accesses"].as_array().unwrap().iter().map(|a| profiler_common::parse_hex(a["port"].as_str().expect("a port access")).unwrap()).collect()
}

/// The IDE register writes of `ide_do_rw_disk`'s unbatched path, in the order the guest source
/// issues them: the `outb(NAME, ...)` calls of its `None =>` branch, ports from the consts.
fn ide_register_writes_in_source_order() -> Vec<u64> {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmm/guest/src/ide.rs")).expect("vmm/guest/src/ide.rs");
    let port_of = |name: &str| -> u64 {
        let decl = format!("pub const {name}: u16 = ");
        let at = src.find(&decl).unwrap_or_else(|| panic!("no const {name}")) + decl.len();
        profiler_common::parse_hex(src[at..].split(';').next().unwrap()).unwrap()
    };
    let f = src.find("pub fn ide_do_rw_disk").expect("ide_do_rw_disk");
    let branch = &src[f..][src[f..].find("None => {").unwrap()..];
    let branch = &branch[..branch.find("Some(q) =>").unwrap()];
    let calls: Vec<u64> = branch.match_indices("outb(").map(|(i, _)| port_of(branch[i + 5..].split(',').next().unwrap().trim())).collect();
    assert_eq!(calls.len(), 12, "the unbatched path writes 11 task-file registers and the command: {calls:x?}");
    calls
}

/// Words per sector in the guest's `rep outsw` (`Sector(pub [u16; N])`).
fn words_per_sector() -> u32 {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmm/guest/src/ide.rs")).unwrap();
    let at = src.find("pub struct Sector(pub [u16; ").expect("struct Sector") + "pub struct Sector(pub [u16; ".len();
    src[at..].split(']').next().unwrap().parse().unwrap()
}

/// Out exits on the IDE registers 0x1f1-0x1f7 plus the batched-PIO doorbell 0x510: every exit
/// the IDE register writes cost (the demo's Table 4 count).
fn ide_register_write_exits(p: &Profile) -> u64 {
    p.exits
        .iter()
        .filter(|e| matches!(e.access.port(), Some((Direction::Out, port)) if (0x1f1..=0x1f7).contains(&port) || port == 0x510))
        .map(|e| e.stats.count)
        .sum()
}

#[test]
fn disk_write_register_run_and_data_loop_predict_the_batch_pio_saving() {
    require_live();
    let dir = tmpdir();
    let elf = guest_elf(dir.path());
    let before = record_disk(dir.path(), "unbatched", &[]);
    let after = record_disk(dir.path(), "batched", &["--batch-pio"]);
    let v = advise_json(&before, &["--vmlinux", path_str(&elf)]);
    assert_eq!(v["source"], "emulated");
    let cs = candidates(&v);

    // The top register-write candidate: writes to the IDE task-file/command registers.
    let is_regs = |c: &serde_json::Value| c["accesses"].as_array().unwrap().iter().all(|a| a["direction"] == "out" && a["port"].as_str().is_some_and(|p| ("0x1f1"..="0x1f7").contains(&p)));
    let top = cs.iter().find(|c| is_regs(c)).unwrap_or_else(|| panic!("no register-write candidate: {v:#}"));
    assert_eq!(top["functions"], serde_json::json!(["tinyvmm_guest::ide::ide_do_rw_disk"]), "{top:#}");
    assert_eq!(ports(top), ide_register_writes_in_source_order(), "accesses in the guest source's order: {top:#}");
    let rips: Vec<u64> = top["accesses"].as_array().unwrap().iter().map(|a| profiler_common::parse_hex(a["rip"].as_str().unwrap()).unwrap()).collect();
    assert!(rips.windows(2).all(|w| w[0] < w[1]), "straight-line code: RIPs ascend {rips:x?}");
    assert_eq!(top["run_length"], 12);
    assert_eq!(top["has_reads"], false);
    assert_eq!(top["exits"].as_u64().unwrap(), 12 * top["occurrences"].as_u64().unwrap());

    // Predicted vs measured: the register-write runs of ide_do_rw_disk (what --batch-pio
    // merges) against the register-write exits before minus after (doorbells included).
    let predicted: u64 = cs
        .iter()
        .filter(|c| is_regs(c) && c["functions"] == serde_json::json!(["tinyvmm_guest::ide::ide_do_rw_disk"]))
        .map(|c| c["exits_saved"].as_u64().unwrap())
        .sum();
    let (b, a) = (recording::load(&before).unwrap(), recording::load(&after).unwrap());
    let measured = ide_register_write_exits(&b) - ide_register_write_exits(&a);
    assert_eq!(measured, 11 * SECTORS, "12 register writes -> 1 doorbell per command");
    assert!(predicted.abs_diff(measured) * 20 <= measured, "predicted {predicted} is not within 5% of measured {measured}");

    // The data-port loop: one port repeated, run length = words per sector, in ide_output_data.
    let words = words_per_sector();
    let data = cs
        .iter()
        .find(|c| c["repeats_one_access"] == true && ports(c).first() == Some(&0x1f0) && c["run_length"] == words)
        .unwrap_or_else(|| panic!("no run of {words} x out 0x1f0: {v:#}"));
    assert_eq!(data["functions"], serde_json::json!(["tinyvmm_guest::ide::ide_output_data"]));
    assert_eq!(data, &cs[0], "the data loop saves the most exits");
    // A host preemption of the vCPU thread inside a sector's loop splits it (the gap includes
    // the time off CPU), it never lengthens it: the full-length run is the most common, no
    // run of that access is longer, and the fragments still hold (almost) every data exit.
    let loops: Vec<&serde_json::Value> = cs.iter().filter(|c| ports(c).first() == Some(&0x1f0) && c["repeats_one_access"] == true).collect();
    assert!(loops.iter().all(|c| c["run_length"].as_u64().unwrap() <= words as u64 && c["occurrences"].as_u64() <= data["occurrences"].as_u64()), "{v:#}");
    assert!(data["occurrences"].as_u64().unwrap() * 2 >= SECTORS, "{data:#}");
    let in_runs: u64 = loops.iter().map(|c| c["exits"].as_u64().unwrap()).sum();
    assert!(in_runs <= words as u64 * SECTORS && in_runs + 10 >= words as u64 * SECTORS, "{in_runs} data exits in runs");

    // The table names the same.
    let o = run(KVMPROF, &["advise", path_str(&before), "--vmlinux", path_str(&elf), "--top", "3"]);
    let t = stdout(&o);
    assert!(o.status.success() && t.contains("ide_output_data") && t.contains("out 0x1f0@") && t.contains(&format!("x{words}")), "{t}");
}

/// Records kvm-exit-loop's interleaved guest with `work` iterations of guest work between the
/// two places' pairs of outs: the recording and the two places' first `out` RIPs.
fn interleaved(dir: &Path, work: u32) -> (std::path::PathBuf, u64, u64) {
    let out = dir.join(format!("inter-{work}.kvmprof"));
    let w = work.to_string();
    let mut args = vec!["record", "-o", path_str(&out)];
    let lp = exit_loop();
    args.extend(["--", lp.as_str(), "--outs", "200", "--interleaved-work", &w, "--out-port", "0x80"]);
    let o = run(KVMPROF, &args);
    assert!(o.status.success(), "record: {}", stderr(&o));
    let g = json(stdout(&o).lines().last().unwrap());
    let rip = |k: &str| profiler_common::parse_hex(g[k].as_str().unwrap()).unwrap();
    (out, rip("out_rip"), rip("second_rip"))
}

#[test]
fn interleaved_functions_separated_by_guest_work_do_not_merge() {
    require_live();
    let dir = tmpdir();
    // Guest work far longer than the default gap between the two places' pairs of outs:
    // ~0.6 ms of emulated instructions on PVM (default gap 200 us); natively (hw, default gap
    // 5 us) the loop runs about 1 000x faster, so it is 1 000x longer.
    let work = match profiler_daemon::live::detect_source() {
        profiler_daemon::model::Source::Emulated => 500,
        profiler_daemon::model::Source::Hw => 500_000,
    };
    let (file, a, b) = interleaved(dir.path(), work);
    let v = advise_json(&file, &[]);
    let cs = candidates(&v);
    let rips = |c: &serde_json::Value| -> Vec<u64> { c["accesses"].as_array().unwrap().iter().map(|x| profiler_common::parse_hex(x["rip"].as_str().unwrap()).unwrap()).collect() };
    for c in cs {
        let r = rips(c);
        assert!(r == [a, a + 2] || r == [b, b + 2], "a run mixes the two places or is longer than a pair: {c:#}");
    }
    for place in [a, b] {
        let c = cs.iter().find(|c| rips(c)[0] == place).unwrap_or_else(|| panic!("no pair run at {place:#x}: {v:#}"));
        assert_eq!(c["run_length"], 2);
        assert!(c["occurrences"].as_u64().unwrap() >= 190, "{c:#}");
    }
    // Control: without the work in between the same accesses are one long run, so the test
    // above would see a merged run if the gap were not respected.
    let (file, a, b) = interleaved(dir.path(), 0);
    let v = advise_json(&file, &[]);
    let merged = candidates(&v).iter().any(|c| {
        let r = rips(c);
        r.contains(&a) && r.contains(&b) && r.windows(2).any(|w| w == [a + 2, b]) && c["run_length"].as_u64().unwrap() > 4
    });
    assert!(merged, "without the work the two places' outs form one run: {v:#}");
}

/// The ftrace text a VMX host would print for these exits: `kvm_exit` (+ `kvm_pio`) at each
/// exit's start, `kvm_entry` at its end.
fn as_vmx_ftrace(p: &Profile) -> String {
    let mut t = String::from("# tracer: nop\n");
    let tgid = p.meta.pid.unwrap_or(1);
    for r in profiler_daemon::model::recording::records(p).expect("records") {
        let e = &p.exits[r.exit];
        let ts = |ns: u64| format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000);
        let head = format!("vcpu0-{} ({tgid}) [001] d..2. ", e.tid);
        let reason = match (e.reason.name().as_str(), e.access.port()) {
            (_, Some(_)) => "IO_INSTRUCTION".to_string(),
            ("HLT", _) => "HLT".into(),
            _ => "EXTERNAL_INTERRUPT".into(),
        };
        writeln!(t, "{head}{}: kvm_exit: vcpu 0 reason {reason} rip {:#x} info1 0x0 info2 0x0", ts(r.start_ns), e.rip).unwrap();
        if let Some((d, port)) = e.access.port() {
            let rw = if d == Direction::Out { "pio_write" } else { "pio_read" };
            writeln!(t, "{head}{}: kvm_pio: {rw} at {port:#x} size 1 count 1 val 0x0", ts(r.start_ns)).unwrap();
        }
        writeln!(t, "{head}{}: kvm_entry: vcpu 0, rip {:#x}", ts(r.start_ns + r.duration_ns), e.rip).unwrap();
    }
    t
}

#[test]
fn hw_text_through_import_gives_the_same_runs() {
    require_live();
    let dir = tmpdir();
    let n = "20";
    let img = dir.path().join("d.img");
    std::fs::write(&img, vec![0u8; 64 * 512]).unwrap();
    let live = dir.path().join("live.kvmprof");
    let tv = tinyvmm();
    let o = run(KVMPROF, &["record", "--records", "-o", path_str(&live), "--", &tv, "run", "--workload", "disk-write", "--count", n, "--disk", path_str(&img), "--quiet"]);
    assert!(o.status.success(), "record: {}", stderr(&o));
    let p = recording::load(&live).unwrap();
    assert_eq!(p.meta.records_dropped, 0);
    let txt = dir.path().join("vmx.txt");
    std::fs::write(&txt, as_vmx_ftrace(&p)).unwrap();
    let imported = dir.path().join("imported.kvmprof");
    let gap = format!("{}ns", p.runs.as_ref().unwrap().max_gap_ns);
    let o = run(KVMPROF, &["import", "ftrace", path_str(&txt), "-o", path_str(&imported), "--max-gap", &gap]);
    assert!(o.status.success(), "import: {}", stderr(&o));
    let q = recording::load(&imported).unwrap();
    assert_eq!(q.meta.source.name(), "hw");
    let key = |p: &Profile| {
        let mut v: Vec<_> = p.runs.as_ref().unwrap().list.iter().map(|r| (r.hash, r.length, r.occurrences, r.total_ns, r.kind, r.accesses.clone())).collect();
        v.sort_by_key(|r| (r.0, r.1));
        v
    };
    let (a, b) = (key(&p), key(&q));
    assert!(a.len() >= 3, "the disk-write has runs: {a:?}");
    assert_eq!(a, b, "live and imported runs differ");
    // (Its occurrences can fall short of the sectors on a loaded host: a preemption of the
    // vCPU thread inside a run splits it. Both sides see the same split.)
    assert!(a.iter().any(|r| r.1 == 12), "the register-write run is among them");
}

#[test]
fn a_recording_without_run_data_is_a_one_line_error() {
    let dir = tmpdir();
    let p = synthetic_recording(vec![], serde_json::json!({}), 1);
    assert!(p.runs.is_none());
    let f = dir.path().join("old.kvmprof");
    recording::save(&p, &f).unwrap();
    let o = run(KVMPROF, &["advise", path_str(&f)]);
    assert_one_line_error(&o, "no run data");
}
