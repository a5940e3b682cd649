//! CLI contract: guest-elf, one-line errors, and what profilers rely on (thread name,
//! memory map readable through /proc/PID/mem, symbols at the RIPs the guest runs at).

mod common;
use common::*;
use object::{Object, ObjectSection, ObjectSymbol};
use std::io::{Read, Seek, SeekFrom};

#[test]
fn guest_elf_has_paper_symbols_dwarf_and_fixed_addresses() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("guest.elf");
    let out = tinyvmm().args(["guest-elf", "-o"]).arg(&path).output().unwrap();
    assert!(out.status.success());
    let data = std::fs::read(&path).unwrap();
    assert_eq!(data, vmm::GUEST_ELF);
    let elf = object::File::parse(&*data).unwrap();
    assert_eq!(elf.entry(), 0x10_0000);
    assert!(elf.section_by_name(".debug_info").is_some(), "no DWARF");
    assert!(elf.section_by_name(".debug_line").is_some(), "no line table");
    let names: Vec<String> = elf
        .symbols()
        .filter(|s| s.address() >= 0x10_0000)
        .filter_map(|s| s.name().ok().map(str::to_string))
        .collect();
    for want in ["ide_do_rw_disk", "disk_write_workload", "disk_read_workload", "timer_interrupt", "ack_irq", "verify_pmtmr_rate", "pio_batch"] {
        assert!(names.iter().any(|n| n.contains(want)), "symbol {want} missing");
    }
}

fn one_line_error(args: &[&str], code: i32, needle: &str) {
    let out = tinyvmm().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.starts_with("tinyvmm: ") && err.contains(needle), "{args:?}: {err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn bad_images_guests_and_arguments_get_one_clear_line() {
    require_kvm();
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("missing.img");
    one_line_error(&["run", "--workload", "disk-read", "--disk", missing.to_str().unwrap()], 1, "missing.img");
    one_line_error(&["run", "--workload", "disk-write"], 1, "needs --disk");
    let tiny = t.path().join("tiny.img");
    std::fs::write(&tiny, [0u8; 100]).unwrap();
    one_line_error(&["run", "--workload", "disk-read", "--disk", tiny.to_str().unwrap()], 1, "smaller than one");
    let junk = t.path().join("junk.elf");
    std::fs::write(&junk, b"this is not an ELF file at all, just some bytes ........").unwrap();
    one_line_error(&["run", "--workload", "timer", "--guest", junk.to_str().unwrap()], 1, "bad guest image");
    // An ELF that is valid but loads below 1 MiB (over the boot structures).
    let mut low = vmm::GUEST_ELF.to_vec();
    let phoff = u64::from_le_bytes(low[0x20..0x28].try_into().unwrap()) as usize;
    let paddr = phoff + 0x18;
    low[paddr..paddr + 8].copy_from_slice(&0x1000u64.to_le_bytes());
    let lowp = t.path().join("low.elf");
    std::fs::write(&lowp, &low).unwrap();
    one_line_error(&["run", "--workload", "timer", "--guest", lowp.to_str().unwrap()], 1, "bad guest image");
    let bad = tinyvmm().args(["run", "--workload", "timer", "--pit-hz", "0"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("error: invalid value '0' for '--pit-hz"));
}

#[test]
fn vcpu_thread_name_and_memory_map_let_a_profiler_read_guest_memory() {
    require_kvm();
    let t = tempfile::tempdir().unwrap();
    let map = t.path().join("map.json");
    let mut child = tinyvmm()
        .args(["run", "--quiet", "--workload", "timer", "--seconds", "2", "--skip-pmtmr-calibration", "--memory-map"])
        .arg(&map)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        if let Ok(s) = std::fs::read_to_string(&map) {
            if s.ends_with('\n') {
                break s;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no memory map written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["pid"], pid);
    let region = &v["regions"][0];
    assert_eq!(region["guest_phys"], "0x0");
    assert_eq!(region["size"], 64u64 << 20);
    let host = u64::from_str_radix(region["host_virt"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();

    let comms: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect();
    assert!(comms.iter().any(|c| c == "vcpu0"), "threads: {comms:?}");

    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut magic = [0u8; 4];
    mem.seek(SeekFrom::Start(host + vmm::abi::BOOT_PARAMS_ADDR)).unwrap();
    mem.read_exact(&mut magic).unwrap();
    assert_eq!(u32::from_le_bytes(magic), vmm::abi::BOOT_PARAMS_MAGIC);
    // The guest's code is at its link address: the bytes at the entry match the ELF's.
    let elf = object::File::parse(vmm::GUEST_ELF).unwrap();
    let text_sec = elf.section_by_name(".text").unwrap();
    let want = &text_sec.data().unwrap()[..64];
    let mut got = vec![0u8; 64];
    mem.seek(SeekFrom::Start(host + text_sec.address())).unwrap();
    mem.read_exact(&mut got).unwrap();
    assert_eq!(got, want);
    assert!(child.wait().unwrap().success());
}

#[test]
fn network_arguments_that_cannot_work_get_one_clear_line() {
    require_kvm();
    for wl in ["net-echo", "net-rx", "net-tx", "net-tcp-rx", "net-hostile"] {
        one_line_error(&["run", "--workload", wl], 1, "needs a NIC: add --net tap:NAME");
    }
    one_line_error(&["run", "--workload", "net-tx", "--net", "tap:x", "--size", "15"], 1, "--size 15: a datagram is 16 to 1472 bytes");
    one_line_error(&["run", "--workload", "net-tx", "--net", "tap:x", "--size", "1473"], 1, "a datagram is 16 to 1472 bytes");
    for (flag, value) in [("--nic-mode", "poll"), ("--guest-ip", "198.18.1"), ("--net", "tun:x")] {
        let bad = tinyvmm().args(["run", "--workload", "net-echo", flag, value]).output().unwrap();
        let err = String::from_utf8_lossy(&bad.stderr);
        assert_eq!(bad.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.starts_with(&format!("error: invalid value '{value}' for '{flag}")), "{err}");
    }
}
