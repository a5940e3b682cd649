//! Replays the committed fuzz seeds and regression inputs (`fuzz/seeds/TARGET`,
//! `fuzz/regressions/TARGET`) through the same harnesses the cargo-fuzz targets run
//! (`profiler_daemon::fuzz`), so CI checks every invariant on them without fuzzing.
//! `scripts/fuzz.sh` does the fuzzing.
use std::path::Path;

use profiler_daemon::fuzz;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else { continue };
        for e in dir {
            let p = e.unwrap().path();
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no seeds for {target}");
    out
}

fn replay(target: &str, harness: fn(&[u8])) -> usize {
    let inputs = inputs(target);
    for (name, data) in &inputs {
        // The harness panics on a broken invariant; name the input that broke it.
        if std::panic::catch_unwind(|| harness(data)).is_err() {
            panic!("{target}: {name} broke the harness's invariant");
        }
    }
    inputs.len()
}

#[test]
fn recording_seeds_parse_and_round_trip() {
    replay("recording", fuzz::recording);
    // The seeds must reach the round trip, not stop at a parse error: every version.
    for (name, data) in inputs("recording").iter().filter(|(n, _)| n.contains("/seeds/")) {
        profiler_daemon::model::recording::from_bytes(data, name).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn import_seeds_import_and_round_trip() {
    replay("import", fuzz::import);
    for (name, data) in inputs("import").iter().filter(|(n, _)| n.contains("/seeds/")) {
        let format = if data[0] & 1 == 0 { profiler_daemon::import::TextFormat::Ftrace } else { profiler_daemon::import::TextFormat::PerfScript };
        let imported = profiler_daemon::import::import(&data[1..], format).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(imported.profile.total_exits() > 0, "{name}");
    }
}

#[test]
fn guest_memory_map_seeds_parse_and_round_trip() {
    replay("guest_memory_map", fuzz::guest_memory_map);
}

#[test]
fn serve_config_seeds_parse() {
    replay("serve_config", fuzz::serve_config);
}
