//! Caller attribution live: the bundled guest under real `kvmprof record`, checked against call
//! chains known from the guest's source (vmm/guest/src/workloads.rs, ide.rs) and symbols.
mod common;

use std::path::{Path, PathBuf};

use common::*;
use profiler_daemon::model::{recording, ThreadInfo};
use symbolizer::Symbolizer;

/// `<target>/release/tinyvmm`, next to the test executable's `deps/` directory.
fn tinyvmm() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(Path::parent).unwrap().join("tinyvmm");
    assert!(p.exists(), "{} is missing: build it with `cargo build --release -p vmm`", p.display());
    p
}

/// Records `tinyvmm run --workload disk-write --count n` and returns (recording, guest ELF).
fn record_disk_write(dir: &Path, n: u64, extra: &[&str]) -> (std::process::Output, PathBuf, PathBuf) {
    let vmm = tinyvmm();
    let elf = dir.join("guest.elf");
    let o = run(path_str(&vmm), &["guest-elf", "-o", path_str(&elf)]);
    assert!(o.status.success(), "tinyvmm guest-elf: {}", stderr(&o));
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let out = dir.join("run.kvmprof");
    let count = n.to_string();
    let mut args = vec!["record", "-o", path_str(&out)];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", path_str(&vmm), "run", "--workload", "disk-write", "--count", &count]);
    args.extend_from_slice(&["--disk", path_str(&disk), "--skip-pmtmr-calibration", "--quiet"]);
    (run(KVMPROF, &args), out, elf)
}

fn function_range(sym: &Symbolizer, name_suffix: &str, probe: u64) -> (u64, u64) {
    // The function containing `probe`: start = probe - offset; end = first address past it
    // that resolves to another function.
    // Frames are innermost first; the last is the real (non-inlined) function.
    let frames = sym.symbolize(probe).unwrap();
    let f = frames.last().unwrap();
    assert!(f.function.ends_with(name_suffix), "{probe:#x} is in {}, not {name_suffix}", f.function);
    let start = probe - f.offset;
    let mut end = probe;
    while sym.function_name(end).is_some_and(|n| n.ends_with(name_suffix)) {
        end += 1;
    }
    (start, end)
}

#[test]
fn ide_register_writes_are_attributed_to_the_caller_of_ide_do_rw_disk() {
    require_live();
    let dir = tmpdir();
    const N: u64 = 5;
    let (o, rec, elf) = record_disk_write(dir.path(), N, &[]);
    assert!(o.status.success(), "record failed: {}", stderr(&o));
    let sym = Symbolizer::from_elf(&elf).unwrap();
    let report = report_json(&rec, &["--by", "caller", "--vmlinux", path_str(&elf)]);
    let rows = report["rows"].as_array().unwrap();
    let hex = |v: &serde_json::Value| u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();

    // Ground truth from the source: disk_write_workload -> ide_do_rw_disk, whose inlined outb()
    // writes the task-file registers 0x1f1..0x1f7 (0x1f1-0x1f5 twice, 0x1f6 and the command once:
    // 12 per sector); ide_do_rw_disk -> ide_output_data, whose `rep outsw` writes 0x1f0.
    let mut register_writes = 0;
    let mut data_writes = 0;
    let mut dww: Option<(u64, u64)> = None;
    for r in rows {
        let port = r["port"].as_str().map(|p| u64::from_str_radix(p.trim_start_matches("0x"), 16).unwrap());
        let out = r["direction"] == "out";
        let trap = r["function"].as_str().unwrap_or("[unknown]");
        let count = r["count"].as_u64().unwrap();
        if out && trap.ends_with("::ide_do_rw_disk") && matches!(port, Some(0x1f1..=0x1f7)) {
            assert_eq!(r["reason"], io_reason(), "{r:#}");
            assert!(
                r["caller_function"].as_str().is_some_and(|f| f.ends_with("::disk_write_workload")),
                "IDE register write at {} has caller {:?} ({:?}), not disk_write_workload",
                r["rip"],
                r["caller_function"],
                r["caller_rip"]
            );
            let caller = hex(&r["caller_rip"]);
            let (start, end) = *dww.get_or_insert_with(|| function_range(&sym, "::disk_write_workload", caller));
            assert!((start..end).contains(&caller), "caller address {caller:#x} outside disk_write_workload {start:#x}..{end:#x}");
            register_writes += count;
        }
        if out && port == Some(0x1f0) {
            assert!(trap.ends_with("::ide_output_data"), "data write trapped in {trap}");
            assert_eq!(r["reason"], io_reason(), "{r:#}");
            assert!(
                r["caller_function"].as_str().is_some_and(|f| f.ends_with("::ide_do_rw_disk")),
                "data write has caller {:?}, not ide_do_rw_disk",
                r["caller_function"]
            );
            data_writes += count;
        }
    }
    assert_eq!(register_writes, 12 * N, "IDE register writes from ide_do_rw_disk with a known caller");
    assert_eq!(data_writes, 256 * N, "data-port writes (one exit per word of rep outsw)");
    let total = report["total_exits"].as_u64().unwrap();
    assert_eq!(rows.iter().map(|r| r["count"].as_u64().unwrap()).sum::<u64>(), total, "every exit is in a row");
    let notes = report["notes"].as_array().unwrap();
    assert_eq!(notes[0], format!("0 of {total} exits (0.00%) have an unknown caller ([unknown])"), "every exit of tinyvmm has a caller: {notes:?}");
    let pct_sum: f64 = rows.iter().map(|r| r["percent"].as_f64().unwrap()).sum();
    assert!((pct_sum - 100.0).abs() <= 1e-9, "the rows' time shares add up to {pct_sum}");

    // One vCPU thread, `vcpu0`: vCPU 0 from the tracepoint on a source that names it (hw),
    // else from the thread's name.
    let profile = recording::load(&rec).unwrap();
    let by_vcpu = report_json(&rec, &["--by", "vcpu"]);
    assert_eq!(common::rows(&by_vcpu).len(), 1, "{by_vcpu:#}");
    let row = &common::rows(&by_vcpu)[0];
    let tid = row["tid"].as_u64().unwrap() as u32;
    let thread = &profile.threads[&tid];
    assert_eq!(thread.comm, "vcpu0");
    let want = if source_names_vcpu() { Some(0) } else { ThreadInfo::from_comm(thread.tgid, thread.comm.as_bytes()).vcpu };
    assert_eq!(want, Some(0), "tinyvmm's vCPU thread is vCPU 0 on every source");
    assert_eq!(row["vcpu"].as_u64().map(|v| v as u32), want, "{row:#}");
    assert_eq!((row["count"].as_u64(), row["percent"].as_f64()), (Some(total), Some(100.0)), "{row:#}");
    let tracepoint_vcpu = if source_names_vcpu() { Some(0) } else { None };
    assert!(profile.exits.iter().all(|e| e.tid == tid && e.vcpu == tracepoint_vcpu), "exits of the vCPU thread, vcpu field {tracepoint_vcpu:?}");

    // The table prints Table 3's columns.
    let o = run(KVMPROF, &["report", path_str(&rec), "--by", "caller", "--vmlinux", path_str(&elf)]);
    let t = stdout(&o);
    assert!(t.contains("Trap address  Trap function") && t.contains("Caller address  Caller function"), "{t}");
}

#[test]
fn without_a_memory_map_callers_are_unknown_and_counted() {
    require_live();
    // kvm-exit-loop is not tinyvmm: no map, so every exit has an unknown caller, and the
    // exact count at one RIP is unchanged.
    let dir = tmpdir();
    let out = dir.path().join("loop.kvmprof");
    let o = run(KVMPROF, &["record", "-o", path_str(&out), "--", &exit_loop(), "--outs", "300"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = report_json(&out, &["--by", "caller"]);
    let rows = report["rows"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["caller_rip"].is_null() && r["caller_function"].is_null()), "{rows:?}");
    // kvm-exit-loop --outs 300 (0 ins): 300 outs at one RIP, then one hlt.
    let guest = kvm_exit_loop::ExitLoopGuest::new(300, 0, 0x80, 0x71);
    let out_row = row_at(&report, "rip", &format!("{:#x}", guest.out_rip));
    assert_eq!(out_row["count"], 300);
    assert_eq!((out_row["reason"].as_str(), out_row["direction"].as_str(), out_row["port"].as_str()), (Some(io_reason()), Some("out"), Some("0x80")));
    let hlt_row = row_at(&report, "rip", &format!("{:#x}", guest.hlt_rip));
    assert_eq!((hlt_row["count"].as_u64(), hlt_row["reason"].as_str()), (Some(1), Some(hlt_reason())));
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let total = report["total_exits"].as_u64().unwrap();
    assert_eq!(total, 301);
    let note = report["notes"][0].as_str().unwrap();
    assert!(note.starts_with(&format!("{total} of {total} exits (100.00%) have an unknown caller")), "{note}");
}

/// `kvmprof record --guest-memory-map MAP -- sh -c 'printf CONTENT > MAP; exec tinyvmm run ...'`:
/// the command itself writes the map, as a VMM would.
fn record_with_written_map(dir: &Path, content: &str) -> (std::process::Output, PathBuf) {
    let map = dir.join("map.json");
    let _ = std::fs::remove_file(&map);
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let out = dir.join("bad.kvmprof");
    let script = format!(
        "printf '%s' '{content}' > {map}; exec {vmm} run --workload disk-write --count 1 --disk {disk} --skip-pmtmr-calibration --quiet",
        map = map.display(),
        vmm = tinyvmm().display(),
        disk = disk.display()
    );
    let o = run(KVMPROF, &["record", "-o", path_str(&out), "--guest-memory-map", path_str(&map), "--", "/bin/sh", "-c", &script]);
    (o, out)
}

#[test]
fn a_garbage_guest_memory_map_is_one_clear_error() {
    require_live();
    let dir = tmpdir();
    // Not JSON: the command still runs and its recording is kept, then one error line.
    let (o, rec) = record_with_written_map(dir.path(), "this is not a memory map");
    let err = stderr(&o);
    assert!(!o.status.success(), "a garbage map must fail the recording: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<_> = err.lines().filter(|l| l.starts_with("kvmprof: error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains("is not valid") && errors[0].contains("not JSON"), "{err}");
    assert!(rec.exists(), "the recording is kept");

    // Well-formed, but its host addresses are not mapped in the VMM: refused, not trusted.
    let (o, _) = record_with_written_map(dir.path(), r#"{"regions":[{"guest_phys":"0x0","size":268435456,"host_virt":"0x1000"}]}"#);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.lines().any(|l| l.starts_with("kvmprof: error:") && l.contains("not readable")), "{err}");

    // --pid: the map is checked before recording starts; one line, nothing recorded.
    let mut vm = std::process::Command::new(exit_loop()).args(["--outs", "100000000"]).stdout(std::process::Stdio::null()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "[1, 2, 3]").unwrap();
    let out = dir.path().join("pid.kvmprof");
    let o = run(KVMPROF, &["record", "-o", path_str(&out), "--pid", &vm.id().to_string(), "--guest-memory-map", path_str(&bad)]);
    let _ = vm.kill();
    let _ = vm.wait();
    assert_one_line_error(&o, "is not valid: no \"regions\" array");
    assert!(!out.exists());
}
