//! `kvmprof diff`: two synthetic recordings with known changes, through the library and the CLI.
mod common;

use std::path::Path;
use std::process::Command;

use profiler_daemon::diff::{self, DiffBy, DiffFormat};
use profiler_daemon::recording::Recording;
use profiler_daemon::report::hist_quantile;

/// One IO exit row: `n` exits of `ns_each` ns at `rip` on `port` (out or in).
fn row(rip: u64, dir: &str, port: u64, n: u64, ns_each: u64) -> serde_json::Value {
    let mut hist = vec![0u64; 32];
    hist[63 - ns_each.leading_zeros() as usize] = n;
    serde_json::json!({
        "tgid": 100, "tid": 101, "vcpu": null, "isa": "kvm_exit", "reason": 2, "reason_name": "IO",
        "rip": format!("{rip:#x}"), "detail_kind": dir, "detail": format!("{port:#x}"),
        "count": n, "total_ns": n * ns_each, "hist": hist,
    })
}

fn recording(rows: Vec<serde_json::Value>) -> Recording {
    common::synthetic_recording(rows, serde_json::json!({ "101": { "tgid": 100, "comm": "vcpu0", "vcpu": 0 } }), 100)
}

fn before() -> Recording {
    recording(vec![
        row(0x1000, "port_out", 0x1f3, 12, 1000),
        row(0x2000, "port_out", 0x1f7, 4, 2000),
        row(0x3000, "port_in", 0x608, 10, 500),
    ])
}

fn after() -> Recording {
    recording(vec![
        row(0x2000, "port_out", 0x1f7, 4, 2000),
        row(0x3000, "port_in", 0x608, 5, 500),
        row(0x4000, "port_out", 0x510, 1, 3000),
    ])
}

fn names(rip: u64) -> Option<String> {
    match rip {
        0x1000 | 0x2000 | 0x4000 => Some("ide_do_rw_disk".into()),
        0x3000 => Some("pm_read".into()),
        _ => None,
    }
}

#[test]
fn by_rip_exact_changes_sorted_by_absolute_change() {
    let d = diff::build(&before(), &after(), DiffBy::Rip, &names);
    let got: Vec<(Option<&str>, u64, u64, i64, Option<f64>, i64)> = d
        .rows
        .iter()
        .map(|r| (r.rip.as_deref(), r.change.count_before, r.change.count_after, r.change.count_change, r.change.count_change_pct, r.change.time_change_ns))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("0x1000"), 12, 0, -12, Some(-100.0), -12_000),
            (Some("0x3000"), 10, 5, -5, Some(-50.0), -2_500),
            (Some("0x4000"), 0, 1, 1, None, 3_000),
            (Some("0x2000"), 4, 4, 0, Some(0.0), 0),
        ]
    );
    assert_eq!(d.rows[0].port.as_deref(), Some("0x1f3"));
    assert_eq!(d.rows[0].direction, Some("out"));
    assert_eq!(d.rows[0].function.as_deref(), Some("ide_do_rw_disk"));
    assert_eq!(d.rows[0].change.time_change_pct, Some(-100.0));
    let t = &d.totals;
    assert_eq!((t.count_before, t.count_after, t.count_change), (26, 10, -16));
    assert!((t.count_change_pct.unwrap() - (-16.0 / 26.0 * 100.0)).abs() < 1e-9);
    assert_eq!((t.time_before_ns, t.time_after_ns, t.time_change_ns), (25_000, 13_500, -11_500));
}

#[test]
fn by_function_merges_rips() {
    let d = diff::build(&before(), &after(), DiffBy::Function, &names);
    let got: Vec<(Option<&str>, u64, u64, i64)> =
        d.rows.iter().map(|r| (r.function.as_deref(), r.change.count_before, r.change.count_after, r.change.count_change)).collect();
    // ide_do_rw_disk: 12 + 4 -> 4 + 1; pm_read: 10 -> 5.
    assert_eq!(got, vec![(Some("ide_do_rw_disk"), 16, 5, -11), (Some("pm_read"), 10, 5, -5)]);
    assert_eq!(d.rows[0].change.time_before_ns, 20_000);
    assert_eq!(d.rows[0].change.time_after_ns, 11_000);
}

#[test]
fn renders_table_and_json() {
    let d = diff::build(&before(), &after(), DiffBy::Rip, &names);
    let table = d.render(DiffFormat::Table, None);
    assert!(table.starts_with("exits: 26 -> 10 (-16, -61.5%)"), "{table}");
    assert!(table.contains("-100.0%") && table.contains("new"), "{table}");
    let j: serde_json::Value = serde_json::from_str(&d.render(DiffFormat::Json, Some(2))).unwrap();
    assert_eq!(j["rows"].as_array().unwrap().len(), 2);
    assert_eq!(j["rows"][0]["count_change"], -12);
    assert_eq!(j["totals"]["count_after"], 10);
}

#[test]
fn quantiles_from_log2_histogram() {
    let mut h = [0u64; 32];
    h[10] = 98; // [1024, 2048) ns
    h[20] = 2; // [1 Mi, 2 Mi) ns
    assert_eq!(hist_quantile(&h, 0.5), 1448); // 1024 * sqrt(2)
    assert_eq!(hist_quantile(&h, 0.99), 1_482_910); // 2^20 * sqrt(2)
    assert_eq!(hist_quantile(&[0; 32], 0.5), 0);
}

fn kvmprof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kvmprof"))
}

fn save(dir: &Path, name: &str, r: &Recording) -> std::path::PathBuf {
    let p = dir.join(name);
    r.save(&p).unwrap();
    p
}

#[test]
fn cli_diff_json_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let b = save(dir.path(), "b.kvmprof", &before());
    let a = save(dir.path(), "a.kvmprof", &after());
    let out = kvmprof().arg("diff").arg(&b).arg(&a).args(["--format", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["totals"]["count_change"], -16);
    assert_eq!(j["rows"][0]["rip"], "0x1000");

    // Function rows need symbols: one clear line, non-zero exit.
    let out = kvmprof().arg("diff").arg(&b).arg(&a).args(["--by", "function"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--by function needs the guest's symbols") && err.lines().count() == 1, "{err}");

    let out = kvmprof().arg("diff").arg(&b).arg(dir.path().join("missing")).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read") && !err.contains("panicked"), "{err}");
}

#[test]
fn cli_report_folded_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let b = save(dir.path(), "b.kvmprof", &before());
    let svg = dir.path().join("flame.svg");
    let out = kvmprof().arg("report").arg(&b).args(["--format", "folded", "--svg"]).arg(&svg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let folded = String::from_utf8(out.stdout).unwrap();
    // No symbols: the RIP is the function frame; the reason frame carries the port.
    assert!(folded.lines().any(|l| l == "0x1000;IO_out_0x1f3 12"), "{folded}");
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse_with_options(&text, roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() }).expect("flame graph is XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(text.contains("0x1000"));
}
