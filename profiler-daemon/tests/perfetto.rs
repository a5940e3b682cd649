//! `report --format perfetto`: every recorded exit is one slice on its vCPU thread's track.
//! The trace is decoded twice, by protoc's schema-less `--decode_raw` (an independent decoder:
//! Debian's protobuf-compiler) and by kvmprof's own prost messages, and both must show exactly
//! the recording's records: per thread, the same number of slices, at the same timestamps,
//! with the same durations.
mod common;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use common::*;
use kvm_exit_loop::ExitLoopGuest;
use profiler_daemon::model::{recording, Profile};
use profiler_daemon::render::perfetto::{thread_uuid, Trace, TYPE_SLICE_BEGIN, TYPE_SLICE_END};
use prost::Message;

/// One slice as a decoder saw it: begin, end, and (prost only) name and reason.
#[derive(Debug, Clone, PartialEq)]
struct Slice {
    begin: u64,
    end: u64,
    name: Option<String>,
    reason: Option<String>,
}

/// What the recording says the slices must be, per thread track.
fn expected(p: &Profile) -> BTreeMap<u64, Vec<Slice>> {
    let mut m: BTreeMap<u64, Vec<Slice>> = BTreeMap::new();
    for r in recording::records(p).unwrap() {
        let e = &p.exits[r.exit];
        m.entry(thread_uuid(e.tid)).or_default().push(Slice {
            begin: r.start_ns,
            end: r.start_ns + r.duration_ns,
            name: Some(format!("{:#x}", e.rip)),
            reason: Some(e.reason.name()),
        });
    }
    m
}

/// One decoded event: track, type, timestamp, name, reason.
type Event = (u64, i32, u64, Option<String>, Option<String>);

/// Pairs SLICE_BEGIN / SLICE_END per track (slices on one track never overlap here).
fn pair(events: Vec<Event>) -> BTreeMap<u64, Vec<Slice>> {
    let mut m: BTreeMap<u64, Vec<Slice>> = BTreeMap::new();
    for (track, ty, ts, name, reason) in events {
        let slices = m.entry(track).or_default();
        match ty {
            TYPE_SLICE_BEGIN => slices.push(Slice { begin: ts, end: u64::MAX, name, reason }),
            TYPE_SLICE_END => {
                let open = slices.last_mut().expect("an END after its BEGIN");
                assert_eq!(open.end, u64::MAX, "one open slice per track");
                open.end = ts;
            }
            t => panic!("unexpected event type {t}"),
        }
    }
    m
}

fn prost_slices(bytes: &[u8]) -> BTreeMap<u64, Vec<Slice>> {
    let trace = Trace::decode(bytes).expect("a perfetto Trace");
    let mut events = Vec::new();
    for p in trace.packet {
        assert_eq!(p.trusted_packet_sequence_id, Some(1));
        if let Some(ev) = p.track_event {
            let reason = ev.debug_annotations.iter().find(|a| a.name.as_deref() == Some("reason")).and_then(|a| a.string_value.clone());
            events.push((ev.track_uuid.unwrap(), ev.r#type.unwrap(), p.timestamp.unwrap(), ev.name, reason));
        }
    }
    pair(events)
}

/// protoc --decode_raw's text: `N: value` and `N { ... }`, nested.
#[derive(Debug)]
enum Raw {
    Scalar(String),
    Msg(Vec<(u32, Raw)>),
}

fn parse_raw(lines: &mut std::str::Lines) -> Vec<(u32, Raw)> {
    let mut fields = Vec::new();
    while let Some(l) = lines.next() {
        let l = l.trim();
        if l == "}" {
            break;
        }
        if let Some(n) = l.strip_suffix(" {") {
            fields.push((n.parse().unwrap(), Raw::Msg(parse_raw(lines))));
        } else if let Some((n, v)) = l.split_once(": ") {
            fields.push((n.parse().unwrap(), Raw::Scalar(v.to_string())));
        }
    }
    fields
}

fn field(m: &[(u32, Raw)], n: u32) -> Option<&Raw> {
    m.iter().find(|(f, _)| *f == n).map(|(_, v)| v)
}

fn num(m: &[(u32, Raw)], n: u32) -> Option<u64> {
    match field(m, n)? {
        Raw::Scalar(s) => s.parse().ok(),
        Raw::Msg(_) => None,
    }
}

/// Timestamps and tracks by protoc alone: TracePacket.timestamp = 8, .track_event = 11;
/// TrackEvent.type = 9, .track_uuid = 11.
fn protoc_slices(file: &Path) -> BTreeMap<u64, Vec<Slice>> {
    let o = std::process::Command::new("protoc")
        .arg("--decode_raw")
        .stdin(std::fs::File::open(file).unwrap())
        .output()
        .expect("protoc (Debian protobuf-compiler, installed by scripts/setup.sh) must be installed");
    assert!(o.status.success(), "protoc --decode_raw: {}", stderr(&o));
    let text = stdout(&o);
    let top = parse_raw(&mut text.lines());
    let mut events = Vec::new();
    for (n, packet) in &top {
        assert_eq!(*n, 1, "a Trace holds only packets");
        let Raw::Msg(p) = packet else { panic!("packet is a message") };
        if let Some(Raw::Msg(ev)) = field(p, 11) {
            events.push((num(ev, 11).unwrap(), num(ev, 9).unwrap() as i32, num(p, 8).unwrap(), None, None));
        }
    }
    pair(events)
}

fn without_names(m: &BTreeMap<u64, Vec<Slice>>) -> BTreeMap<u64, Vec<Slice>> {
    m.iter().map(|(k, v)| (*k, v.iter().map(|s| Slice { name: None, reason: None, ..s.clone() }).collect())).collect()
}

fn perfetto(rec: &Path) -> (PathBuf, Vec<u8>) {
    let out = rec.with_extension("pftrace");
    let o = run(KVMPROF, &["report", path_str(rec), "--format", "perfetto", "-o", path_str(&out)]);
    assert!(o.status.success(), "report --format perfetto: {}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    (out, bytes)
}

fn check(rec: &Path) -> BTreeMap<u64, Vec<Slice>> {
    let p = recording::load(rec).unwrap();
    let want = expected(&p);
    let (file, bytes) = perfetto(rec);
    let mine = prost_slices(&bytes);
    assert_eq!(mine, want, "prost decode vs the recording's records");
    assert_eq!(protoc_slices(&file), without_names(&want), "protoc --decode_raw vs the recording's records");
    // The thread tracks are described, with the thread's ids.
    let trace = Trace::decode(&bytes[..]).unwrap();
    for track in want.keys() {
        let d = trace.packet.iter().filter_map(|p| p.track_descriptor.as_ref()).find(|d| d.uuid == Some(*track)).expect("a descriptor per track");
        let t = d.thread.as_ref().expect("a thread track");
        assert_eq!(thread_uuid(t.tid.unwrap() as u32), *track);
    }
    want
}

/// Two vCPU threads from real-format VMX ftrace text, imported (no root needed).
#[test]
fn imported_exits_are_slices_on_their_threads() {
    let mut t = String::from("# tracer: nop\n");
    let mut line = |tid: u32, ts_us: u64, ev: &str| {
        writeln!(t, "       CPU {}/KVM-{tid}    (4240) [002] d..2.  100.{:06}: {ev}", tid - 4242, ts_us).unwrap();
    };
    for i in 0..5 {
        line(4242, i * 100, "kvm_exit: vcpu 0 reason IO_INSTRUCTION rip 0xffffffff81001000 info1 0x0 info2 0x0");
        line(4242, i * 100 + 1, "kvm_pio: pio_write at 0x1f7 size 1 count 1 val 0x30");
        line(4243, i * 100 + 5, "kvm_exit: vcpu 1 reason HLT rip 0xffffffff81003000 info1 0x0 info2 0x0");
        line(4242, i * 100 + 10 + i, "kvm_entry: vcpu 0, rip 0xffffffff81001002");
        line(4243, i * 100 + 50, "kvm_entry: vcpu 1, rip 0xffffffff81003001");
    }
    let dir = tmpdir();
    let txt = dir.path().join("t.txt");
    std::fs::write(&txt, t).unwrap();
    let rec = dir.path().join("t.kvmprof");
    let o = run(KVMPROF, &["import", "ftrace", path_str(&txt), "-o", path_str(&rec)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let slices = check(&rec);
    let io = &slices[&thread_uuid(4242)];
    assert_eq!(io.len(), 5);
    for (i, s) in io.iter().enumerate() {
        let i = i as u64;
        assert_eq!((s.begin, s.end - s.begin), (100_000_000_000 + i * 100_000, (10 + i) * 1000));
        assert_eq!((s.name.as_deref(), s.reason.as_deref()), (Some("0xffffffff81001000"), Some("IO_INSTRUCTION")));
    }
    let hlt = &slices[&thread_uuid(4243)];
    assert_eq!(hlt.len(), 5);
    assert!(hlt.iter().all(|s| s.end - s.begin == 45_000 && s.reason.as_deref() == Some("HLT")));
}

/// A live recording of a guest with exactly known exits.
#[test]
fn live_records_are_slices_with_exact_times() {
    require_live();
    let dir = tmpdir();
    let rec = dir.path().join("loop.kvmprof");
    let o = run(KVMPROF, &["record", "--records", "-o", path_str(&rec), "--", &exit_loop(), "--outs", "700", "--ins", "300"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let slices = check(&rec);
    assert_eq!(slices.len(), 1, "one vCPU thread");
    let s = slices.values().next().unwrap();
    assert_eq!(s.len(), 700 + 300 + 1);
    let guest = ExitLoopGuest::new(700, 300, 0x80, 0x71);
    assert_eq!(s.iter().filter(|s| s.name == Some(format!("{:#x}", guest.out_rip))).count(), 700);
    assert_eq!(s.iter().filter(|s| s.name == Some(format!("{:#x}", guest.in_rip))).count(), 300);
}

#[test]
fn a_recording_without_records_says_to_record_with_records() {
    let dir = tmpdir();
    let p = synthetic_recording(vec![], serde_json::json!({}), 1);
    let rec = dir.path().join("agg.kvmprof");
    recording::save(&p, &rec).unwrap();
    let out = dir.path().join("x.pftrace");
    let o = run(KVMPROF, &["report", path_str(&rec), "--format", "perfetto", "-o", path_str(&out)]);
    assert_one_line_error(&o, "record it with `kvmprof record --records`");
    assert!(!out.exists());
}
