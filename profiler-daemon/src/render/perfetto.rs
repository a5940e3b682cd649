//! `report --format perfetto`: every recorded exit as a slice on its vCPU thread's track, in
//! Perfetto's native protobuf trace format (open it in ui.perfetto.dev).
//!
//! The file is a `perfetto.protos.Trace`: a sequence of `TracePacket`s (field 1), written one
//! by one as the records stream in, so memory stays bounded whatever the recording's length.
//! First one `TrackDescriptor` per VMM process and per vCPU thread (`ThreadDescriptor`: pid,
//! tid, name), then per exit a `TrackEvent` SLICE_BEGIN at its start (name: the guest function
//! or the RIP; debug annotations: reason, rip, port and direction or gpa, duration_ns) and a
//! SLICE_END at start + duration on the thread's track. The messages are declared here with
//! prost's derive, field numbers from perfetto's `protos/perfetto/trace/trace_packet.proto`,
//! `track_event/track_event.proto`, `track_descriptor.proto`, `thread_descriptor.proto`,
//! `process_descriptor.proto` and `debug_annotation.proto`: no protoc at build time.
use std::collections::BTreeMap;
use std::io::Write;

use prost::Message;

use crate::model::{Access, Exit, Profile, Record};

pub const TYPE_SLICE_BEGIN: i32 = 1;
pub const TYPE_SLICE_END: i32 = 2;
/// `TracePacket.sequence_flags`: SEQ_INCREMENTAL_STATE_CLEARED.
const SEQ_INCREMENTAL_STATE_CLEARED: u32 = 1;
/// All packets are one writer's sequence.
pub const SEQUENCE_ID: u32 = 1;
/// `Trace.packet`, length-delimited: tag (1 << 3) | 2.
const TRACE_PACKET_TAG: u8 = 0x0a;

#[derive(Clone, PartialEq, Message)]
pub struct Trace {
    #[prost(message, repeated, tag = "1")]
    pub packet: Vec<TracePacket>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TracePacket {
    #[prost(uint64, optional, tag = "8")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "10")]
    pub trusted_packet_sequence_id: Option<u32>,
    #[prost(message, optional, tag = "11")]
    pub track_event: Option<TrackEvent>,
    #[prost(uint32, optional, tag = "13")]
    pub sequence_flags: Option<u32>,
    #[prost(message, optional, tag = "60")]
    pub track_descriptor: Option<TrackDescriptor>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TrackDescriptor {
    #[prost(uint64, optional, tag = "1")]
    pub uuid: Option<u64>,
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    #[prost(message, optional, tag = "3")]
    pub process: Option<ProcessDescriptor>,
    #[prost(message, optional, tag = "4")]
    pub thread: Option<ThreadDescriptor>,
    #[prost(uint64, optional, tag = "5")]
    pub parent_uuid: Option<u64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProcessDescriptor {
    #[prost(int32, optional, tag = "1")]
    pub pid: Option<i32>,
    #[prost(string, optional, tag = "6")]
    pub process_name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ThreadDescriptor {
    #[prost(int32, optional, tag = "1")]
    pub pid: Option<i32>,
    #[prost(int32, optional, tag = "2")]
    pub tid: Option<i32>,
    #[prost(string, optional, tag = "5")]
    pub thread_name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TrackEvent {
    #[prost(message, repeated, tag = "4")]
    pub debug_annotations: Vec<DebugAnnotation>,
    #[prost(int32, optional, tag = "9")]
    pub r#type: Option<i32>,
    #[prost(uint64, optional, tag = "11")]
    pub track_uuid: Option<u64>,
    #[prost(string, optional, tag = "23")]
    pub name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DebugAnnotation {
    #[prost(uint64, optional, tag = "3")]
    pub uint_value: Option<u64>,
    #[prost(string, optional, tag = "6")]
    pub string_value: Option<String>,
    #[prost(string, optional, tag = "10")]
    pub name: Option<String>,
}

/// The track of process `tgid` (VMM) and of thread `tid` (vCPU): distinct ranges.
pub fn process_uuid(tgid: u32) -> u64 {
    (1 << 40) | tgid as u64
}

pub fn thread_uuid(tid: u32) -> u64 {
    (2 << 40) | tid as u64
}

fn text(name: &str, v: String) -> DebugAnnotation {
    DebugAnnotation { name: Some(name.into()), string_value: Some(v), uint_value: None }
}

fn number(name: &str, v: u64) -> DebugAnnotation {
    DebugAnnotation { name: Some(name.into()), uint_value: Some(v), string_value: None }
}

/// Writes packets as `Trace.packet` fields, one at a time.
pub struct PerfettoWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    first: bool,
    pub slices: u64,
}

impl<W: Write> PerfettoWriter<W> {
    pub fn new(out: W) -> PerfettoWriter<W> {
        PerfettoWriter { out, buf: Vec::with_capacity(256), first: true, slices: 0 }
    }

    fn packet(&mut self, mut p: TracePacket) -> std::io::Result<()> {
        p.trusted_packet_sequence_id = Some(SEQUENCE_ID);
        if std::mem::take(&mut self.first) {
            p.sequence_flags = Some(SEQ_INCREMENTAL_STATE_CLEARED);
        }
        self.buf.clear();
        self.buf.push(TRACE_PACKET_TAG);
        p.encode_length_delimited(&mut self.buf).map_err(std::io::Error::other)?;
        self.out.write_all(&self.buf)
    }

    /// One track per VMM process and per vCPU thread that has exits.
    pub fn tracks(&mut self, profile: &Profile) -> std::io::Result<()> {
        let mut threads: BTreeMap<u32, BTreeMap<u32, &Exit>> = BTreeMap::new();
        for e in &profile.exits {
            threads.entry(e.tgid).or_default().entry(e.tid).or_insert(e);
        }
        for (tgid, tids) in threads {
            let process_name = profile.meta.command.as_ref().filter(|_| profile.meta.pid == Some(tgid)).and_then(|c| c.first().cloned());
            self.packet(TracePacket {
                track_descriptor: Some(TrackDescriptor {
                    uuid: Some(process_uuid(tgid)),
                    process: Some(ProcessDescriptor { pid: Some(tgid as i32), process_name }),
                    ..TrackDescriptor::default()
                }),
                ..TracePacket::default()
            })?;
            for (tid, e) in tids {
                let comm = profile.threads.get(&tid).map(|t| t.comm.clone()).unwrap_or_default();
                let name = match profile.vcpu_of(e) {
                    Some(v) => format!("vCPU {v} ({comm} {tid})"),
                    None => format!("{comm} {tid}"),
                };
                self.packet(TracePacket {
                    track_descriptor: Some(TrackDescriptor {
                        uuid: Some(thread_uuid(tid)),
                        name: Some(name.clone()),
                        parent_uuid: Some(process_uuid(tgid)),
                        thread: Some(ThreadDescriptor { pid: Some(tgid as i32), tid: Some(tid as i32), thread_name: Some(name) }),
                        ..TrackDescriptor::default()
                    }),
                    ..TracePacket::default()
                })?;
            }
        }
        Ok(())
    }

    /// One exit: a slice from its start to its end on its thread's track.
    pub fn slice(&mut self, e: &Exit, r: &Record, name: String) -> std::io::Result<()> {
        let track = Some(thread_uuid(e.tid));
        let mut args = vec![text("reason", e.reason.name()), text("rip", format!("{:#x}", e.rip))];
        match e.access {
            Access::Port { port, dir } => {
                args.push(number("port", port as u64));
                args.push(text("direction", dir.name().into()));
            }
            Access::Mmio { gpa, dir } => {
                args.push(text("gpa", format!("{gpa:#x}")));
                args.push(text("direction", dir.name().into()));
            }
            Access::None => {}
        }
        args.push(number("duration_ns", r.duration_ns));
        self.packet(TracePacket {
            timestamp: Some(r.start_ns),
            track_event: Some(TrackEvent { debug_annotations: args, r#type: Some(TYPE_SLICE_BEGIN), track_uuid: track, name: Some(name) }),
            ..TracePacket::default()
        })?;
        self.packet(TracePacket {
            timestamp: Some(r.start_ns.saturating_add(r.duration_ns)),
            track_event: Some(TrackEvent { r#type: Some(TYPE_SLICE_END), track_uuid: track, ..TrackEvent::default() }),
            ..TracePacket::default()
        })?;
        self.slices += 1;
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}
