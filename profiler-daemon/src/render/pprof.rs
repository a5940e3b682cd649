//! pprof profiles (`profile.proto`, gzipped), the format `go tool pprof`, Pyroscope and Parca
//! read: `kvmprof report --format pprof` and `serve`'s `/debug/pprof/exits`.
//!
//! Two sample values: `exits/count` and `exit_time/nanoseconds`. A stack is root first
//! `caller → function → reason` (pprof stores it leaf first): the guest function that made
//! the call, the guest function that exited (its RIP in hex without symbols), and the exit
//! reason as the leaf, so `pprof -top` ranks reasons and `-peek` shows functions.
//! The messages are the subset of pprof's `profile.proto` kvmprof writes, with its field
//! numbers, derived with prost (no protoc at build time).
use std::collections::HashMap;
use std::io::Write;

use prost::Message;

use super::hex;
use crate::analysis::callers::caller_function;
use crate::model::Profile;

#[derive(Clone, PartialEq, Message)]
pub struct PprofProfile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
}

/// One stack and its totals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackKey {
    /// Root first: caller, function, reason.
    pub frames: Vec<String>,
    /// Sample labels, e.g. `("vm", "web1")`.
    pub labels: Vec<(String, String)>,
}

/// The frames of one exit site: `[unknown]` for a caller that was not read.
pub fn stack(caller: Option<String>, function: String, reason: String) -> Vec<String> {
    vec![caller.unwrap_or_else(|| "[unknown]".into()), function, reason]
}

#[derive(Default)]
struct Builder {
    p: PprofProfile,
    strings: HashMap<String, i64>,
    /// Frame name → location id (one location, one function per distinct name).
    locations: HashMap<String, u64>,
}

impl Builder {
    fn s(&mut self, v: &str) -> i64 {
        if let Some(i) = self.strings.get(v) {
            return *i;
        }
        let i = self.p.string_table.len() as i64;
        self.p.string_table.push(v.to_string());
        self.strings.insert(v.to_string(), i);
        i
    }

    fn location(&mut self, name: &str) -> u64 {
        if let Some(id) = self.locations.get(name) {
            return *id;
        }
        let id = self.p.location.len() as u64 + 1;
        let n = self.s(name);
        self.p.function.push(Function { id, name: n, system_name: n });
        self.p.location.push(Location { id, line: vec![Line { function_id: id }] });
        self.locations.insert(name.to_string(), id);
        id
    }
}

/// The gzipped profile of these stacks: `(exits, ns)` each. `time_nanos` is the start (Unix
/// ns), `duration_nanos` the window.
pub fn encode(stacks: &[(StackKey, (u64, u64))], time_nanos: i64, duration_nanos: i64) -> Vec<u8> {
    let mut b = Builder::default();
    b.s(""); // string_table[0] must be "".
    let (exits, count, time, ns) = (b.s("exits"), b.s("count"), b.s("exit_time"), b.s("nanoseconds"));
    b.p.sample_type = vec![ValueType { r#type: exits, unit: count }, ValueType { r#type: time, unit: ns }];
    b.p.period_type = Some(ValueType { r#type: exits, unit: count });
    b.p.period = 1;
    b.p.default_sample_type = 0;
    b.p.time_nanos = time_nanos;
    b.p.duration_nanos = duration_nanos;
    for (key, (n, t)) in stacks {
        if *n == 0 && *t == 0 {
            continue;
        }
        let location_id = key.frames.iter().rev().map(|f| b.location(f)).collect();
        let label = key.labels.iter().map(|(k, v)| Label { key: b.s(k), str: b.s(v) }).collect();
        b.p.sample.push(Sample { location_id, value: vec![*n as i64, *t as i64], label });
    }
    gzip(&b.p.encode_to_vec())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// Un-gzips and decodes a profile (for tests and tools).
pub fn decode(gz: &[u8]) -> Result<PprofProfile, String> {
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut raw).map_err(|e| format!("not gzip: {e}"))?;
    PprofProfile::decode(raw.as_slice()).map_err(|e| format!("not a pprof profile: {e}"))
}

/// `report --format pprof`: the recording's exits by (caller, function, reason), the stacks of
/// `report --by caller --format folded`, with a `pid` label per process.
pub fn from_profile(profile: &Profile, resolve: &dyn Fn(u64) -> Option<String>) -> Vec<u8> {
    let mut stacks: HashMap<StackKey, (u64, u64)> = HashMap::new();
    let caller_name = |c: u64| caller_function(c, resolve).unwrap_or_else(|| hex(c));
    for e in &profile.exits {
        let function = resolve(e.rip).unwrap_or_else(|| hex(e.rip));
        let key = StackKey { frames: stack(e.caller.map(caller_name), function, e.reason.name()), labels: vec![("pid".into(), e.tgid.to_string())] };
        let v = stacks.entry(key).or_default();
        v.0 += e.stats.count;
        v.1 += e.stats.total_ns;
    }
    let mut v: Vec<_> = stacks.into_iter().collect();
    v.sort();
    let m = &profile.meta;
    encode(&v, m.start_unix_ns as i64, m.end_unix_ns.saturating_sub(m.start_unix_ns) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_gzip_and_protobuf() {
        let k = |f: &str| StackKey { frames: stack(None, f.into(), "IO".into()), labels: vec![("vm".into(), "a".into())] };
        let gz = encode(&[(k("f"), (3, 30)), (k("g"), (1, 5))], 7, 9);
        let p = decode(&gz).unwrap();
        assert_eq!(p.string_table[0], "");
        assert_eq!(p.sample.len(), 2);
        assert_eq!(p.sample[0].value, vec![3, 30]);
        let name = |id: u64| &p.string_table[p.function[id as usize - 1].name as usize];
        assert_eq!(name(p.sample[0].location_id[0]), "IO", "leaf first");
        assert_eq!(name(p.sample[0].location_id[1]), "f");
        assert_eq!(name(p.sample[0].location_id[2]), "[unknown]");
        assert_eq!(p.duration_nanos, 9);
    }
}
