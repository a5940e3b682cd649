//! A damaged recording gets one clear line and a non-zero exit from every command that reads
//! one, never a panic: truncated, not JSON, empty, not a recording, a newer format version,
//! and internally inconsistent. The good file is a real one, imported from trace text.
mod common;

use std::path::{Path, PathBuf};

use common::*;
use profiler_common::{hist_bucket_of_legacy, hist_bucket_value, HIST_BUCKETS, LEGACY_LOG2_BUCKETS};
use profiler_daemon::model::recording;

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

/// An edit of a recording's JSON.
type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;

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
    let cases: Vec<(&str, Edit)> = vec![
        // More exits in the histogram than counted (fewer is allowed: exits counted after the
        // in-kernel map filled have no histogram).
        ("hist", Box::new(|v| v["exits"][0]["count"] = 0.into())),
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

/// The histogram must be the one of the file's version: version 2's sparse pairs with buckets
/// in range, version 1's exactly 32 log2 counts. Each wrong one is corrupt, and says why.
#[test]
fn histograms_of_the_wrong_shape_for_their_version_are_corrupt() {
    let dir = tmpdir();
    let good = good_recording(dir.path());
    let mut log2 = vec![0u64; LEGACY_LOG2_BUCKETS];
    log2[13] = 1;
    let log2 = serde_json::json!(log2);
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("v2-log2", Box::new(move |v| v["exits"][0]["hist"] = log2), "histogram is not [[bucket, count], ...]"),
        ("v2-range", Box::new(|v| v["exits"][0]["hist"] = serde_json::json!([[HIST_BUCKETS, 1]])), "histogram bucket 256 is out of range"),
        ("v2-sum", Box::new(|v| v["exits"][0]["hist"] = serde_json::json!([[91, 1], [92, 1]])), "histogram counts add up to more than count 1"),
        (
            "v1-sparse",
            Box::new(|v| {
                v["version"] = 1.into();
                v["exits"][0]["hist"] = serde_json::json!([[91, 1]]);
            }),
            "histogram is not a list of counts",
        ),
        (
            "v1-short",
            Box::new(|v| {
                v["version"] = 1.into();
                let mut h = vec![0u64; LEGACY_LOG2_BUCKETS - 1];
                h[13] = 1;
                v["exits"][0]["hist"] = serde_json::json!(h);
            }),
            "histogram has 31 buckets, expected 32",
        ),
    ];
    for (name, edit, why) in cases {
        let bad = mutated(dir.path(), &format!("{name}.kvmprof"), edit);
        assert_refused(&bad, &good, "is a corrupt kvmprof recording");
        let e = recording::load(&bad).expect_err(name).to_string();
        assert!(e.contains(why), "{name}: {e:?} does not say {why:?}");
    }
}

/// A version 1 exit row: `count` is the sum of the 32 log2 counts `(bucket, n)`.
fn v1_exit(rip: u64, port: u64, log2: &[(usize, u64)], total_ns: u64) -> serde_json::Value {
    let mut hist = vec![0u64; LEGACY_LOG2_BUCKETS];
    for (b, n) in log2 {
        hist[*b] += n;
    }
    serde_json::json!({
        "tgid": 7, "tid": 8, "vcpu": null, "isa": "kvm_exit", "reason": 2, "reason_name": "IO",
        "rip": format!("{rip:#x}"), "detail_kind": "port_out", "detail": format!("{port:#x}"),
        "count": log2.iter().map(|(_, n)| n).sum::<u64>(), "total_ns": total_ns, "hist": hist,
    })
}

/// Recordings written before the log-linear histogram (version 1: `hist` is 32 log2 counts)
/// still load: counts and times as written, every exit in the histogram, and percentiles
/// read where the old reports printed them (each old bucket's geometric middle, now in the
/// log-linear bucket holding it).
#[test]
fn version_1_recordings_with_log2_histograms_still_read() {
    let dir = tmpdir();
    let v1 = serde_json::json!({
        "format": "kvmprof-recording", "version": 1,
        "meta": { "source": "emulated", "origin": "live", "tool_version": "0.1.0", "kernel": "k", "host": "h",
                  "start_unix_ns": 0, "end_unix_ns": 1, "pid": 7, "command": null, "command_status": 0,
                  "records_requested": false, "records_dropped": 0, "exit_keys_full": 0, "threads_full": 0,
                  "unfinished_exits": 0 },
        "threads": { "8": { "tgid": 7, "comm": "vcpu0", "vcpu": 0 } },
        "exits": [
            // 60 exits in [1024, 2048) ns and 40 in [8192, 16384): p50 in the first, p99 in the second.
            v1_exit(0x1000, 0x1f3, &[(10, 60), (13, 40)], 60 * 1500 + 40 * 10_000),
            // One exit in old bucket 0 ([0, 2) ns).
            v1_exit(0x2000, 0x1f7, &[(0, 1)], 1),
            // An empty histogram, for an exit count of 0.
            v1_exit(0x3000, 0x510, &[], 0),
        ],
        "records": [[100, 1, 1]],
    });
    let path = dir.path().join("v1.kvmprof");
    std::fs::write(&path, v1.to_string()).unwrap();

    let p = recording::load(&path).expect("a version 1 recording loads");
    let counts: Vec<(u64, u64, u64)> = p.exits.iter().map(|e| (e.rip, e.stats.count, e.stats.total_ns)).collect();
    assert_eq!(counts, vec![(0x1000, 100, 490_000), (0x2000, 1, 1), (0x3000, 0, 0)]);
    assert_eq!(p.total_exits(), 101);
    for e in &p.exits {
        assert_eq!(e.stats.hist.iter().sum::<u64>(), e.stats.count, "every exit is in the histogram: {e:?}");
    }
    // Each old bucket's count lands in the bucket of its old estimate.
    let h = &p.exits[0].stats.hist;
    assert_eq!((h[hist_bucket_of_legacy(10)], h[hist_bucket_of_legacy(13)]), (60, 40));
    assert_eq!(p.exits[1].stats.hist[hist_bucket_of_legacy(0)], 1);
    assert_eq!(p.threads[&8].vcpu, Some(0));
    assert_eq!(p.records.as_ref().map(|r| (r.len(), r[0].exit, r[0].start_ns)), Some((1, 1, 100)));

    let v = report_json(&path, &["--by", "rip"]);
    assert_eq!(v["total_exits"], 101);
    let r = row_at(&v, "rip", "0x1000");
    assert_eq!((r["count"].as_u64(), r["time_ns"].as_u64(), r["port"].as_str()), (Some(100), Some(490_000), Some("0x1f3")));
    // Old reports printed 1448 (1024 * sqrt 2) and 11585 (8192 * sqrt 2); now each reads as
    // the log-linear bucket holding that value: 1472 and 11776, within 6.25%.
    assert_eq!(r["p50_ns"].as_u64(), Some(hist_bucket_value(hist_bucket_of_legacy(10))));
    assert_eq!(r["p99_ns"].as_u64(), Some(hist_bucket_value(hist_bucket_of_legacy(13))));
    assert_eq!((r["p50_ns"].as_u64(), r["p99_ns"].as_u64()), (Some(1472), Some(11_776)));
    assert_eq!(row_at(&v, "rip", "0x2000")["p50_ns"], 1);
    assert_eq!(row_at(&v, "rip", "0x3000")["p50_ns"], 0);

    // Saved again, it is a version 2 file with the same contents.
    let again = dir.path().join("v2.kvmprof");
    recording::save(&p, &again).unwrap();
    let text: serde_json::Value = serde_json::from_slice(&std::fs::read(&again).unwrap()).unwrap();
    assert_eq!(text["version"], 2);
    assert_eq!(text["exits"][0]["hist"], serde_json::json!([[hist_bucket_of_legacy(10), 60], [hist_bucket_of_legacy(13), 40]]));
    assert_eq!(recording::load(&again).unwrap(), p);

    // The good (version 2) recording, rewritten as version 1 with its exit in old bucket 13.
    let good = good_recording(dir.path());
    let old = mutated(dir.path(), "good-v1.kvmprof", |v| {
        v["version"] = 1.into();
        let mut h = vec![0u64; LEGACY_LOG2_BUCKETS];
        h[13] = 1;
        v["exits"][0]["hist"] = serde_json::json!(h);
    });
    let (a, b) = (report_json(&good, &["--by", "rip"]), report_json(&old, &["--by", "rip"]));
    let (ra, rb) = (row_at(&a, "rip", "0xffffffff81001000"), row_at(&b, "rip", "0xffffffff81001000"));
    for k in ["count", "time_ns", "mean_ns", "port", "direction", "reason"] {
        assert_eq!(ra[k], rb[k], "{k}");
    }
    assert_eq!(rb["p50_ns"].as_u64(), Some(hist_bucket_value(hist_bucket_of_legacy(13))));
}

/// A version 3 recording keeps its records in a stream file beside it: that file missing,
/// cut short, damaged inside, or not a stream at all is refused by report and diff with one
/// line naming it.
#[test]
fn damaged_record_streams_are_refused() {
    let dir = tmpdir();
    let good = good_recording(dir.path());
    let stream = profiler_daemon::model::record_stream::path_for(&good);
    let bytes = std::fs::read(&stream).expect("import writes a record stream");
    // Each damage is made on a copy of the good pair (recording + stream) under a new name.
    let pair = |name: &str, stream_bytes: Option<Vec<u8>>| -> PathBuf {
        let rec = dir.path().join(name);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&good).unwrap()).unwrap();
        let sname = format!("{name}.records");
        v["records_file"]["name"] = sname.clone().into();
        std::fs::write(&rec, serde_json::to_vec(&v).unwrap()).unwrap();
        if let Some(b) = stream_bytes {
            std::fs::write(dir.path().join(sname), b).unwrap();
        }
        rec
    };
    let missing = pair("missing.kvmprof", None);
    assert_refused(&missing, &good, "cannot read the record stream");
    let cut = pair("cut.kvmprof", Some(bytes[..bytes.len() - 20].to_vec()));
    assert_refused(&cut, &good, "is truncated at byte");
    let mut flipped = bytes.clone();
    // The first record's start time: inside the RECORDS block, after the header (16 B), the
    // KEYS block (12 + 48 B) and the RECORDS block's header (12 B).
    flipped[16 + 12 + 48 + 12] ^= 0x40;
    let crc = pair("crc.kvmprof", Some(flipped));
    assert_refused(&crc, &good, "fails its CRC check");
    let foreign = pair("foreign.kvmprof", Some(b"not a stream at all".to_vec()));
    assert_refused(&foreign, &good, "is not a kvmprof record stream");
    let mut newer = bytes.clone();
    newer[8] = 9;
    let newer = pair("newer.kvmprof", Some(newer));
    assert_refused(&newer, &good, "is record stream version 9, newer than this kvmprof reads");
    // The good pair still reads, and the stream holds the recording's one exit.
    let p = recording::load(&good).unwrap();
    assert_eq!(recording::records(&p).unwrap().len(), 1);
    assert_eq!(p.records_file.as_ref().map(|s| s.records), Some(1));
}
