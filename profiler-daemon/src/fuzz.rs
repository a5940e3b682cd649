//! Fuzz harnesses for everything kvmprof parses, shared by the cargo-fuzz targets
//! (`profiler-daemon/fuzz`) and the test that replays their committed corpora
//! (`tests/fuzz_corpora.rs`). Each takes arbitrary bytes, and beyond "no panic" checks an
//! invariant (it panics when one does not hold):
//!
//! - [`recording`]: whatever parses (any format version) writes out and parses back to the
//!   same profile, and writing that again gives the same bytes.
//! - [`import`]: the first byte picks ftrace or perf-script text; a trace that imports
//!   counts no more exits than it had events, no more records than exits, and its recording
//!   round-trips as above.
//! - [`guest_memory_map`]: a map that parses has 1 to 8 non-empty regions that neither wrap
//!   nor overlap, and written back out as JSON it parses to the same map.
//! - [`serve_config`]: a config that parses has its limits (top functions 1 to 1000, an
//!   interval of at least 100 ms), and every `[[vm]]` name without wildcards matches itself.
//!
//! Keep each harness a thin call of the public entry point: the fuzz targets and the corpus
//! test only name these functions.
#![doc(hidden)]

use crate::import::TextFormat;
use crate::live::guest_memory::MemoryMap;
use crate::model::{recording, Profile};
use crate::serve::config::{glob_match, Config, MIN_INTERVAL};

/// Writes `p` out and reads it back: the same profile, and the same bytes again.
fn round_trips(p: &Profile) {
    let bytes = recording::to_bytes(p);
    let back = recording::from_bytes(&bytes, "round-trip").unwrap_or_else(|e| panic!("a written recording does not read back: {e}"));
    assert!(back == *p, "a recording read back differs from what was written");
    assert!(recording::to_bytes(&back) == bytes, "writing a recording read back gives other bytes");
}

pub fn recording(data: &[u8]) {
    if let Ok(p) = recording::from_bytes(data, "fuzz") {
        round_trips(&p);
    }
}

pub fn import(data: &[u8]) {
    let Some((&sel, text)) = data.split_first() else { return };
    let format = if sel & 1 == 0 { TextFormat::Ftrace } else { TextFormat::PerfScript };
    let Ok(imported) = crate::import::import(text, format) else { return };
    let p = &imported.profile;
    let exits: u64 = p.exits.iter().map(|e| e.stats.count).sum();
    assert!(imported.events + imported.skipped <= imported.lines, "{} events + {} skipped in {} lines", imported.events, imported.skipped, imported.lines);
    assert!(exits <= imported.events, "{exits} exits from {} events", imported.events);
    if let Some(records) = &p.records {
        assert!(records.len() as u64 <= exits, "{} records of {exits} exits", records.len());
    }
    round_trips(p);
}

pub fn guest_memory_map(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(m) = MemoryMap::parse(text) else { return };
    let regions = &m.map.regions[..m.map.count as usize];
    assert!((1..=profiler_common::guest::MAX_REGIONS).contains(&regions.len()));
    for (i, r) in regions.iter().enumerate() {
        assert!(r.size > 0 && r.guest_phys.checked_add(r.size).is_some() && r.host_virt.checked_add(r.size).is_some(), "region {i}");
        for o in &regions[..i] {
            assert!(r.guest_phys + r.size <= o.guest_phys || o.guest_phys + o.size <= r.guest_phys, "regions overlap");
        }
    }
    let json = serde_json::json!({
        "pid": m.pid,
        "regions": regions.iter().map(|r| serde_json::json!({
            "guest_phys": format!("{:#x}", r.guest_phys), "size": r.size, "host_virt": format!("{:#x}", r.host_virt),
        })).collect::<Vec<_>>(),
    });
    assert_eq!(MemoryMap::parse(&json.to_string()).as_ref(), Ok(&m), "a map written back parses to the same map");
}

pub fn serve_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let c = match Config::parse(text) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.contains('\n'), "a config error is one line: {e:?}");
            return;
        }
    };
    assert!((1..=1000).contains(&c.top_functions));
    assert!(c.interval.is_none_or(|i| i >= MIN_INTERVAL));
    for v in &c.vms {
        assert!(v.symbols.vmlinux.is_some() || v.symbols.kallsyms.is_some());
        if !v.name.contains(['*', '?']) {
            assert!(glob_match(&v.name, &v.name), "{:?} does not match itself", v.name);
        }
        let _ = c.symbols_for(&v.name);
    }
}
