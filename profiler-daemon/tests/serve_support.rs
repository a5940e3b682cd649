//! Helpers of the `kvmprof serve` tests (included with `#[path]`; as a test target of its own
//! it has no tests): the daemon and a real Prometheus as guards that stop them in all cases,
//! a minimal HTTP client, and a parser of the text exposition format.
#![allow(dead_code)]
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The path of kvmprof, built by cargo for these tests.
pub const KVMPROF_BIN: &str = env!("CARGO_BIN_EXE_kvmprof");

/// A loopback address no one listens on now.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port")
}

/// `GET path` over HTTP/1.0 (the server closes the connection: no chunking, no keep-alive).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(660))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read {path}: {e}"))?;
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("no HTTP header end in {} bytes", buf.len()))?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("bad status line: {head}"))?;
    Ok((status, buf[split + 4..].to_vec()))
}

pub fn get_text(addr: SocketAddr, path: &str) -> String {
    let (status, body) = http_get(addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
    String::from_utf8(body).expect("UTF-8 body")
}

/// One sample of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the text format (the label values kvmprof writes have no escaped quotes).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let mut labels = BTreeMap::new();
                for pair in split_labels(body) {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("bad label in {line:?}"));
                    labels.insert(k.to_string(), v.trim_matches('"').replace("\\\\", "\\"));
                }
                (n.to_string(), labels)
            }
        };
        out.push(Sample { name, labels, value });
    }
    out
}

/// `a="x,y",b="z"` → [`a="x,y"`, `b="z"`]: commas inside quotes do not split.
fn split_labels(body: &str) -> Vec<String> {
    let (mut parts, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in body.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        parts.push(cur);
    }
    parts
}

/// Samples named `name` whose labels include all of `want`.
pub fn select<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples.iter().filter(|s| s.name == name && want.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))).collect()
}

pub fn sum(samples: &[&Sample]) -> f64 {
    samples.iter().map(|s| s.value).sum()
}

/// A running `kvmprof serve`; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Serve {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Serve {
    /// Starts `kvmprof serve --listen ADDR ARGS...` and waits until /healthz answers.
    pub fn start(args: &[&str]) -> Serve {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("serve.log");
        let addr = free_addr();
        let child = Command::new(KVMPROF_BIN)
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn kvmprof serve");
        let mut s = Serve { child, addr, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(addr, "/healthz") {
                return s;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("kvmprof serve exited ({status}) before serving: {}", s.log_text());
            }
            assert!(Instant::now() < deadline, "kvmprof serve did not answer in 30 s: {}", s.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> Vec<Sample> {
        parse_metrics(&get_text(self.addr, "/metrics"))
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped (we hold it).
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0, "kill");
    }

    /// Sends `sig` and waits for the exit (up to 20 s).
    pub fn stop_with(&mut self, sig: i32) -> ExitStatus {
        self.signal(sig);
        wait_timeout(&mut self.child, Duration::from_secs(20)).unwrap_or_else(|| panic!("kvmprof serve did not stop on signal {sig}: {}", self.log_text()))
    }

    /// Polls /metrics until `cond` holds (up to `timeout`); the last samples.
    pub fn wait_for(&self, timeout: Duration, what: &str, cond: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics();
            if cond(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; log: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, up to 10 s, then SIGKILL; always reaped.
pub fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on our own unreaped child's PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    if wait_timeout(child, Duration::from_secs(10)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A real Prometheus server (Debian's `prometheus`) on loopback, scraping `targets` every
/// second, with its storage in a temporary directory; stopped when dropped.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(targets: &[SocketAddr]) -> Prometheus {
        let bin = which("prometheus").expect("the `prometheus` server is required (Debian package prometheus; scripts/setup.sh installs it)");
        let dir = tempfile::tempdir().expect("tempdir");
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let cfg = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: kvmprof\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), cfg).expect("write prometheus.yml");
        let addr = free_addr();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log"))
            .spawn()
            .expect("spawn prometheus");
        let mut p = Prometheus { child, addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(addr, "/-/ready") {
                return p;
            }
            if let Ok(Some(s)) = p.child.try_wait() {
                panic!("prometheus exited ({s}): {}", std::fs::read_to_string(p._dir.path().join("prometheus.log")).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "prometheus not ready in 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `/api/v1/query` (instant); the `data.result` array.
    pub fn query(&self, q: &str) -> Vec<serde_json::Value> {
        self.api(&format!("/api/v1/query?query={}", urlencode(q)))
    }

    /// `/api/v1/query_range` over Unix seconds `[start, end]`, as Grafana asks.
    pub fn query_range(&self, q: &str, start: f64, end: f64, step: f64) -> Vec<serde_json::Value> {
        self.api(&format!("/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}", urlencode(q)))
    }

    fn api(&self, path: &str) -> Vec<serde_json::Value> {
        let (status, body) = http_get(self.addr, path).unwrap_or_else(|e| panic!("prometheus {path}: {e}"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("prometheus {path}: not JSON ({e})"));
        assert_eq!(status, 200, "prometheus {path}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// The value of an instant-query sample.
pub fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A tinyvmm VM started in the background: `tinyvmm run --name NAME ARGS...`.
pub fn start_tinyvmm(tinyvmm: &Path, name: &str, args: &[&str]) -> Child {
    Command::new(tinyvmm)
        .args(["run", "--name", name, "--quiet"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tinyvmm")
}

/// Kills and reaps a child when dropped (VMs the test started).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One sample of a pprof profile, decoded by [`decode_pprof`].
#[derive(Debug, Clone)]
pub struct PprofSample {
    /// Frame names, leaf first (as pprof stores them).
    pub stack: Vec<String>,
    pub values: Vec<i64>,
    pub labels: Vec<(String, String)>,
}

/// Decodes a gzipped pprof profile with a protobuf wire reader written here from
/// `profile.proto`'s field numbers (not kvmprof's own message types): sample types as
/// `type/unit`, and the samples.
pub fn decode_pprof(gz: &[u8]) -> (Vec<String>, Vec<PprofSample>) {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut raw).expect("gzip");
    let top = wire_fields(&raw);
    let strings: Vec<String> = top.iter().filter(|(f, _)| *f == 6).map(|(_, v)| String::from_utf8(v.bytes().to_vec()).expect("UTF-8 string")).collect();
    assert_eq!(strings.first().map(String::as_str), Some(""), "string_table[0] must be empty");
    let s = |i: u64| strings.get(i as usize).cloned().unwrap_or_else(|| panic!("string index {i} out of range"));
    let mut functions = BTreeMap::new();
    for (_, v) in top.iter().filter(|(f, _)| *f == 5) {
        let m = wire_fields(v.bytes());
        functions.insert(m.iter().find(|(f, _)| *f == 1).map(|(_, v)| v.int()).unwrap_or(0), s(m.iter().find(|(f, _)| *f == 2).map(|(_, v)| v.int()).unwrap_or(0)));
    }
    let mut locations = BTreeMap::new();
    for (_, v) in top.iter().filter(|(f, _)| *f == 4) {
        let m = wire_fields(v.bytes());
        let id = m.iter().find(|(f, _)| *f == 1).map(|(_, v)| v.int()).expect("location id");
        let line = m.iter().find(|(f, _)| *f == 4).map(|(_, v)| wire_fields(v.bytes())).expect("location line");
        let fid = line.iter().find(|(f, _)| *f == 1).map(|(_, v)| v.int()).expect("function_id");
        locations.insert(id, functions[&fid].clone());
    }
    let types = top
        .iter()
        .filter(|(f, _)| *f == 1)
        .map(|(_, v)| {
            let m = wire_fields(v.bytes());
            let get = |n| m.iter().find(|(f, _)| *f == n).map(|(_, v)| v.int()).unwrap_or(0);
            format!("{}/{}", s(get(1)), s(get(2)))
        })
        .collect();
    let mut samples = Vec::new();
    for (_, v) in top.iter().filter(|(f, _)| *f == 2) {
        let m = wire_fields(v.bytes());
        let ints = |n| m.iter().filter(|(f, _)| *f == n).flat_map(|(_, v)| v.ints()).collect::<Vec<u64>>();
        let stack = ints(1).iter().map(|id| locations.get(id).cloned().unwrap_or_else(|| panic!("no location {id}"))).collect();
        let values = ints(2).into_iter().map(|v| v as i64).collect();
        let labels = m
            .iter()
            .filter(|(f, _)| *f == 3)
            .map(|(_, v)| {
                let l = wire_fields(v.bytes());
                let get = |n| l.iter().find(|(f, _)| *f == n).map(|(_, v)| v.int()).unwrap_or(0);
                (s(get(1)), s(get(2)))
            })
            .collect();
        samples.push(PprofSample { stack, values, labels });
    }
    (types, samples)
}

pub enum Wire<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

impl<'a> Wire<'a> {
    fn int(&self) -> u64 {
        match self {
            Wire::Int(v) => *v,
            Wire::Bytes(_) => panic!("expected a varint"),
        }
    }

    fn bytes(&self) -> &'a [u8] {
        match self {
            Wire::Bytes(b) => b,
            Wire::Int(_) => panic!("expected length-delimited bytes"),
        }
    }

    /// A repeated integer field: one varint, or a packed run of them.
    fn ints(&self) -> Vec<u64> {
        match self {
            Wire::Int(v) => vec![*v],
            Wire::Bytes(b) => {
                let (mut pos, mut out) = (0, Vec::new());
                while pos < b.len() {
                    out.push(varint(b, &mut pos));
                }
                out
            }
        }
    }
}

fn varint(b: &[u8], pos: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*pos];
        *pos += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// The (field number, value) pairs of one protobuf message.
pub fn wire_fields(b: &[u8]) -> Vec<(u64, Wire<'_>)> {
    let (mut pos, mut out) = (0, Vec::new());
    while pos < b.len() {
        let tag = varint(b, &mut pos);
        let v = match tag & 7 {
            0 => Wire::Int(varint(b, &mut pos)),
            1 => {
                pos += 8;
                Wire::Int(u64::from_le_bytes(b[pos - 8..pos].try_into().unwrap()))
            }
            2 => {
                let n = varint(b, &mut pos) as usize;
                pos += n;
                Wire::Bytes(&b[pos - n..pos])
            }
            5 => {
                pos += 4;
                Wire::Int(u32::from_le_bytes(b[pos - 4..pos].try_into().unwrap()) as u64)
            }
            t => panic!("wire type {t} at byte {pos}"),
        };
        out.push((tag >> 3, v));
    }
    out
}
