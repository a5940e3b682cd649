//! A damaged recording gets one clear line and a non-zero exit from every command that reads
//! one, never a panic: truncated, not JSON, empty, not a recording, a newer format version,
//! and internally inconsistent. The good file is a real one, imported from trace text.
mod common;

use std::path::{Path, PathBuf};

use common::*;

const TRACE: &str = "\
 qemu-4242 [001] 100.000000: kvm:kvm_exit: vcpu 0 reason IO_INSTRUCTION rip 0xffffffff81001000 info1 0x0 info2 0x0 intr_info 0x0 error_code 0x0
 qemu-4242 [001] 100.000001: kvm:kvm_pio: pio_write at 0x1f7 size 1 count 1 val 0x30
 qemu-4242 [001] 100.000010: kvm:kvm_entry: vcpu 0, rip 0xffffffff81001002
";

fn good_recording(dir: &Path) -> PathBuf {
    let txt = dir.join("trace.txt");
    std::fs::write(&txt, TRACE).unwrap();
    let rec = dir.join("good.kvmprof");
    let o = run(KVMPROF, &["import", "perf-script", path_str(&txt), "-o", path_str(&rec)]);
    assert!(o.status.success(), "{}", stderr(&o));
    rec
}

/// Every reader of recordings (report in each format, diff on either side) refuses `bad`
/// with one line containing `needle`.
fn assert_refused(bad: &Path, good: &Path, needle: &str) {
    let b = path_str(bad);
    for args in [
        vec!["report", b],
        vec!["report", b, "--format", "json"],
        vec!["report", b, "--by", "port", "--format", "csv"],
        vec!["diff", b, path_str(good)],
        vec!["diff", path_str(good), b],
    ] {
        let o = run(KVMPROF, &args);
        assert_one_line_error(&o, needle);
        assert!(stdout(&o).is_empty(), "nothing printed on stdout for {args:?}");
    }
}

fn mutated(dir: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let good = good_recording(dir);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&good).unwrap()).unwrap();
    edit(&mut v);
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    p
}

#[test]
fn the_good_recording_reads() {
    let dir = tmpdir();
    let good = good_recording(dir.path());
    let v = report_json(&good, &["--by", "rip"]);
    assert_eq!(row_at(&v, "rip", "0xffffffff81001000")["count"], 1);
}

#[test]
fn truncated_recordings_say_so() {
    let dir = tmpdir();
    let good = good_recording(dir.path());
    let bytes = std::fs::read(&good).unwrap();
    for cut in [1, bytes.len() / 3, bytes.len() / 2, bytes.len() - 3] {
        let bad = dir.path().join(format!("cut{cut}.kvmprof"));
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        assert_refused(&bad, &good, "is truncated");
    }
}

#[test]
fn garbage_empty_and_foreign_files_are_not_recordings() {
    let dir = tmpdir();
    let good = good_recording(dir.path());
    let cases: [(&str, &[u8], &str); 4] = [
        ("garbage", b"\x7fELF\x02\x01\x01\x00 binary junk", "is not a kvmprof recording"),
        ("empty", b"", "the file is empty"),
        ("other-json", br#"{"hello": "world"}"#, "is not a kvmprof recording"),
        ("array", b"[1, 2, 3]", "is not a kvmprof recording"),
    ];
    for (name, bytes, needle) in cases {
        let bad = dir.path().join(name);
        std::fs::write(&bad, bytes).unwrap();
        assert_refused(&bad, &good, needle);
    }
    assert_refused(Path::new("/no/such/recording"), &good, "cannot read /no/such/recording");
}

#[test]
fn a_newer_format_version_asks_for_an_upgrade() {
    let dir = tmpdir();
    let good = good_recording(dir.path());
    let bad = mutated(dir.path(), "v99.kvmprof", |v| v["version"] = 99.into());
    assert_refused(&bad, &good, "is recording format version 99, newer than this kvmprof reads");
}

#[test]
fn inconsistent_recordings_are_corrupt() {
    let dir = tmpdir();
    let good = good_recording(dir.path());
    let cases: Vec<(&str, Box<dyn FnOnce(&mut serde_json::Value)>)> = vec![
        ("hist", Box::new(|v| v["exits"][0]["count"] = 7.into())),
        ("rip", Box::new(|v| v["exits"][0]["rip"] = "0xZZ".into())),
        ("buckets", Box::new(|v| v["exits"][0]["hist"] = serde_json::json!([1]))),
        ("record", Box::new(|v| v["records"] = serde_json::json!([[0, 0, 5]]))),
        ("field", Box::new(|v| v["meta"] = "nope".into())),
    ];
    for (name, edit) in cases {
        let bad = mutated(dir.path(), &format!("{name}.kvmprof"), edit);
        assert_refused(&bad, &good, "is a corrupt kvmprof recording");
    }
}
