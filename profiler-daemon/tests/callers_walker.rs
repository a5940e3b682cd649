//! Caller attribution without a guest: the page-table walk and frame reader on synthetic guest
//! memory, memory-map parsing, the kernel-BTF offsets, and `--by caller` on recordings.
mod common;

use std::collections::HashMap;

use profiler_common::guest::{self, GuestMemMap, MemRegion, Paging};
use profiler_common::{hist_bucket, hist_bucket_value};
use profiler_daemon::analysis::report::{self, Caller, GroupBy, Note};
use profiler_daemon::live::btf;
use profiler_daemon::live::guest_memory::MemoryMap;
use profiler_daemon::model::{recording, Profile};
use profiler_daemon::render::report::{note_text, render, Format};

const CR0_PG: u64 = 1 << 31;
const EFER_LMA: u64 = 1 << 10;
const P: u64 = 1; // present
const W: u64 = 2;
const PS: u64 = 1 << 7;

/// Sparse guest-physical memory of u64 words.
#[derive(Default)]
struct Mem(HashMap<u64, u64>);

impl Mem {
    fn put(&mut self, gpa: u64, v: u64) {
        self.0.insert(gpa, v);
    }
    fn read(&self, gpa: u64) -> Option<u64> {
        self.0.get(&gpa).copied()
    }
}

fn long_mode(cr3: u64) -> Paging {
    Paging { cr0: CR0_PG | 1, cr3, cr4: 0x20, efer: EFER_LMA | (1 << 8) }
}

/// PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000, mapping
/// - gva 0xffff_8000_0020_3000 (4 KiB page)   -> gpa 0x7_5000
/// - gva 0xffff_8000_0040_0000 (2 MiB page)   -> gpa 0x60_0000
/// - gva 0xffff_8000_4000_0000 (1 GiB page)   -> gpa 0x8000_0000
fn tables() -> Mem {
    let mut m = Mem::default();
    let gva = 0xffff_8000_0020_3000u64;
    let idx = |va: u64, shift: u32| (va >> shift) & 511;
    m.put(0x1000 + idx(gva, 39) * 8, 0x2000 | P | W);
    m.put(0x2000 + idx(gva, 30) * 8, 0x3000 | P | W);
    m.put(0x3000 + idx(gva, 21) * 8, 0x4000 | P | W);
    m.put(0x4000 + idx(gva, 12) * 8, 0x7_5000 | P | W | (1 << 63)); // NX bit must be masked off
    m.put(0x3000 + idx(0xffff_8000_0040_0000, 21) * 8, 0x60_0000 | P | W | PS);
    m.put(0x2000 + idx(0xffff_8000_4000_0000, 30) * 8, 0x8000_0000 | P | W | PS);
    m
}

/// The frame-pointer chain as the eBPF walker follows it, one frame further each step (the
/// library reads only the first frame; a multi-frame walk is this test's ground truth).
/// Return addresses of up to `max` frames, innermost first, following the saved-RBP chain
/// from `rbp`. Stops at the first unreadable frame, or when the chain does not go up the
/// stack (garbage or the outermost frame).
fn walk_frames(p: &Paging, mut rbp: u64, max: usize, read_phys: &dyn Fn(u64) -> Option<u64>) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < max {
        let Some(ra) = guest::return_address(p, rbp, read_phys) else { break };
        out.push(ra);
        let next = guest::translate(p, rbp, read_phys).and_then(read_phys);
        match next {
            Some(n) if n > rbp => rbp = n,
            _ => break,
        }
    }
    out
}

#[test]
fn page_walk_handles_4k_2m_and_1g_pages() {
    let m = tables();
    // CR3's low 12 bits are a PCID, not part of the table address.
    let p = long_mode(0x1000 | 0x5);
    let t = |va| guest::translate(&p, va, |g| m.read(g));
    assert_eq!(t(0xffff_8000_0020_3abc), Some(0x7_5abc));
    assert_eq!(t(0xffff_8000_0041_2345), Some(0x61_2345));
    assert_eq!(t(0xffff_8000_4123_4567), Some(0x8123_4567));
    // Not present at each level.
    assert_eq!(t(0x0000_0000_0020_3000), None, "PML4 entry missing");
    assert_eq!(t(0xffff_8000_8000_0000), None, "PDPT entry missing");
    assert_eq!(t(0xffff_8000_0060_0000), None, "PD entry missing");
    assert_eq!(t(0xffff_8000_0020_4000), None, "PT entry missing");
}

#[test]
fn paging_off_is_identity_and_unsupported_modes_are_unknown() {
    let m = tables();
    let off = Paging { cr0: 1, ..Paging::default() };
    assert_eq!(guest::translate(&off, 0x1234, |g| m.read(g)), Some(0x1234));
    let legacy32 = Paging { cr0: CR0_PG | 1, cr3: 0x1000, cr4: 0, efer: 0 };
    assert_eq!(guest::translate(&legacy32, 0x1234, |g| m.read(g)), None);
    let la57 = Paging { cr4: 0x20 | (1 << 12), ..long_mode(0x1000) };
    assert_eq!(guest::translate(&la57, 0xffff_8000_0020_3000, |g| m.read(g)), None);
}

#[test]
fn frame_chain_walk_reads_return_addresses_and_stops_on_garbage() {
    let mut m = tables();
    // Stack page: gva 0xffff_8000_0020_3000 -> gpa 0x7_5000. Three frames, innermost first.
    let (s, g) = (0xffff_8000_0020_3000u64, 0x7_5000u64);
    m.put(g + 0x100, s + 0x200); // saved rbp of frame 1
    m.put(g + 0x108, 0x10_1111); // return into the caller
    m.put(g + 0x200, s + 0x300);
    m.put(g + 0x208, 0x10_2222);
    m.put(g + 0x300, 0); // outermost: saved rbp 0
    m.put(g + 0x308, 0x10_3333);
    let p = long_mode(0x1000);
    let read = |gpa: u64| m.read(gpa);
    assert_eq!(guest::return_address(&p, s + 0x100, read), Some(0x10_1111));
    assert_eq!(walk_frames(&p, s + 0x100, 8, &read), vec![0x10_1111, 0x10_2222, 0x10_3333]);
    assert_eq!(walk_frames(&p, s + 0x100, 2, &read), vec![0x10_1111, 0x10_2222]);
    // Garbage RBP: misaligned, zero, unmapped: no frame, no panic.
    assert_eq!(guest::return_address(&p, s + 0x101, read), None);
    assert_eq!(guest::return_address(&p, 0, read), None);
    assert_eq!(guest::return_address(&p, u64::MAX - 7, read), None);
    assert!(walk_frames(&p, 0xdead_beef_0000, 8, &read).is_empty());
    // A chain that points down the stack (a loop) stops instead of spinning.
    m.put(g + 0x300, s + 0x100);
    let read = |gpa: u64| m.read(gpa);
    assert_eq!(walk_frames(&p, s + 0x100, 8, &read).len(), 3);
}

#[test]
fn memory_map_regions_translate_guest_physical_to_host_virtual() {
    let mut map = GuestMemMap { count: 2, ..GuestMemMap::default() };
    map.regions[0] = MemRegion { guest_phys: 0, size: 0x8000_0000, host_virt: 0x7f00_0000_0000 };
    map.regions[1] = MemRegion { guest_phys: 0x1_0000_0000, size: 0x1000_0000, host_virt: 0x7e00_0000_0000 };
    assert_eq!(map.host_addr(0x1234, 8), Some(0x7f00_0000_1234));
    assert_eq!(map.host_addr(0x1_0000_0010, 8), Some(0x7e00_0000_0010));
    assert_eq!(map.host_addr(0x7fff_fffc, 8), None, "straddles the end of a region");
    assert_eq!(map.host_addr(0x9000_0000, 8), None, "PCI hole");
    assert_eq!(map.host_addr(u64::MAX, 8), None);
}

#[test]
fn memory_map_files_parse_like_tinyvmm_writes_them_and_garbage_is_refused() {
    let m = MemoryMap::parse(r#"{"pid": 42, "regions": [{"guest_phys": "0x0", "size": 268435456, "host_virt": "0x7f12340000"}]}"#).unwrap();
    assert_eq!(m.pid, Some(42));
    assert_eq!(m.map.count, 1);
    assert_eq!(m.map.regions[0], MemRegion { guest_phys: 0, size: 0x1000_0000, host_virt: 0x7f_1234_0000 });
    for (bad, why) in [
        ("", "not JSON"),
        ("{}", "no \"regions\""),
        (r#"{"regions": []}"#, "0 regions"),
        (r#"{"regions": [{"guest_phys": "0x0", "size": 0, "host_virt": "0x1000"}]}"#, "empty"),
        (r#"{"regions": [{"guest_phys": "zz", "size": 4096, "host_virt": "0x1000"}]}"#, "guest_phys"),
        (r#"{"regions": [{"guest_phys": "0xffffffffffffffff", "size": 4096, "host_virt": "0x1000"}]}"#, "wraps"),
        (r#"{"regions": [{"guest_phys": 0, "size": 8192, "host_virt": 4096}, {"guest_phys": 4096, "size": 4096, "host_virt": 65536}]}"#, "overlap"),
        (r#"{"pid": -1, "regions": [{"guest_phys": 0, "size": 8192, "host_virt": 4096}]}"#, "pid"),
    ] {
        let e = MemoryMap::parse(bad).expect_err(bad);
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn vcpu_register_offsets_come_from_this_kernels_btf() {
    let btf = btf::Btf::from_file(std::path::Path::new(btf::VMLINUX_BTF))
        .expect("/sys/kernel/btf/vmlinux is required (kernel built with CONFIG_DEBUG_INFO_BTF)");
    let offs: HashMap<_, _> = btf::vcpu_offsets(&btf).expect("struct kvm_vcpu in BTF").into_iter().collect();
    let (arch, _) = btf.member("kvm_vcpu", "arch").unwrap();
    let (regs, _) = btf.member("kvm_vcpu_arch", "regs").unwrap();
    // regs[] is unsigned long[NR_VCPU_REGS]: RSP is index 4, RBP index 5.
    assert_eq!(offs["VCPU_RSP"], arch + regs + 32);
    assert_eq!(offs["VCPU_RBP"], arch + regs + 40);
    assert!(offs["VCPU_CR3"] > offs["VCPU_CR0"] && offs["VCPU_CR4"] > offs["VCPU_CR3"]);
    assert!(btf::Btf::parse(b"not btf at all, not btf at all").is_err());
}

/// Every exit of these rows takes this long.
const EXIT_NS: u64 = 1024;

fn recording_with_callers(rows: &[(u64, Option<u64>, u64)]) -> Profile {
    let exits: Vec<_> = rows
        .iter()
        .map(|(rip, caller, n)| {
            // Version 2 histogram: [[bucket, count]], all n exits of EXIT_NS.
            let hist = serde_json::json!([[hist_bucket(EXIT_NS), n]]);
            let mut v = serde_json::json!({
                "tgid": 1, "tid": 2, "vcpu": null, "isa": "kvm_exit", "reason": 2, "reason_name": "IO",
                "rip": format!("{rip:#x}"), "detail_kind": "port_out", "detail": "0x1f3",
                "count": n, "total_ns": n * EXIT_NS, "hist": hist,
            });
            // Recordings from before caller attribution have no "caller_rip" at all.
            if let Some(c) = caller {
                v["caller_rip"] = serde_json::json!(format!("{c:#x}"));
            }
            v
        })
        .collect();
    common::synthetic_recording(exits, serde_json::json!({}), 1)
}

#[test]
fn by_caller_groups_trap_and_caller_and_counts_unknown_callers() {
    // Two callers of the trap at 0x1000, and 3 exits from an old recording without callers.
    let rec = recording_with_callers(&[(0x1000, Some(0x5008), 10), (0x1000, Some(0x6010), 4), (0x1000, None, 3)]);
    let names = |a: u64| match a {
        0x1000..=0x1fff => Some("trap_fn".to_string()),
        0x5000..=0x5fff => Some("caller_a".to_string()),
        // A call as the last instruction of caller_b returns to 0x6010, the next function:
        // the caller is named from the call (address - 1).
        0x6000..=0x600f => Some("caller_b".to_string()),
        0x6010..=0x6fff => Some("next_fn".to_string()),
        _ => None,
    };
    let rep = report::build(&rec, GroupBy::Caller, &names);
    let rows: Vec<_> = rep.rows.iter().map(|r| (r.caller.clone(), r.count)).collect();
    let caller = |rip: Option<u64>, function: Option<&str>| Some(Caller { rip, function: function.map(String::from) });
    assert_eq!(
        rows,
        vec![(caller(Some(0x5008), Some("caller_a")), 10), (caller(Some(0x6010), Some("caller_b")), 4), (caller(None, None), 3)]
    );
    assert!(rep.rows.iter().all(|r| r.function.as_deref() == Some("trap_fn") && r.rip == Some(0x1000)));
    assert_eq!((rep.total_exits, rep.total_time_ns), (17, 17 * EXIT_NS));
    for r in &rep.rows {
        // Every exit takes EXIT_NS: time, share, mean and percentiles follow exactly.
        assert_eq!(r.time_ns, r.count * EXIT_NS);
        assert!((r.percent - 100.0 * r.count as f64 / 17.0).abs() <= 1e-9, "{r:?}");
        assert_eq!(r.mean_ns, EXIT_NS);
        assert_eq!((r.p50_ns, r.p99_ns), (hist_bucket_value(hist_bucket(EXIT_NS)), hist_bucket_value(hist_bucket(EXIT_NS))));
    }
    assert_eq!(rep.notes, vec![Note::UnknownCallers { unknown: 3, total: 17, why: None }]);
    assert!(note_text(&rep.notes[0]).starts_with("3 of 17 exits (17.65%) have an unknown caller"), "{:?}", rep.notes);
    let table = render(&rep, Format::Table, None);
    for col in ["Trap address", "Trap function", "Caller address", "Caller function", "[unknown]", "3 of 17 exits"] {
        assert!(table.contains(col), "{col} missing from:\n{table}");
    }
    let json: serde_json::Value = serde_json::from_str(&render(&rep, Format::Json, None)).unwrap();
    assert_eq!(json["rows"][0]["caller_rip"], "0x5008");
    assert_eq!(json["rows"][0]["caller_function"], "caller_a");
    assert_eq!(json["rows"][1]["caller_rip"], "0x6010");
    assert_eq!(json["rows"][1]["caller_function"], "caller_b");
    assert!(json["rows"][2]["caller_rip"].is_null() && json["rows"][2]["caller_function"].is_null());
    // The caller survives a save/load round trip, and so does everything else.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("callers.kvmprof");
    recording::save(&rec, &path).unwrap();
    let again = recording::load(&path).unwrap();
    assert_eq!(again.exits.iter().map(|e| e.caller).collect::<Vec<_>>(), vec![Some(0x5008), Some(0x6010), None]);
    assert_eq!(again, rec);
}
