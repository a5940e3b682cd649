//! The record stream file: every exit of `record --records` (and of `import`), written to disk
//! as it arrives, in bounded memory, next to the recording (`run.kvmprof` →
//! `run.kvmprof.records`; the recording names it in `records_file`).
//!
//! Format, version 1 (all integers little-endian):
//! ```text
//! header   16 B   magic "KVMPRECS" | version u32 = 1 | reserved u32 = 0
//! blocks          kind u8 | 3 zero bytes | payload length u32 | CRC-32 (IEEE) of the payload u32 | payload
//!   kind 1 KEYS     n × 48 B: exit sites, numbered 0, 1, 2, ... in the order they first appear:
//!                   rip u64 | detail u64 | caller u64 | tgid u32 | tid u32 | vcpu u32 | reason u32 |
//!                   isa u8 | detail_kind u8 | 2 zero bytes | stack id u32   (profiler_common::ExitKey's
//!                   fields; the stack id, 0 = none, was 4 zero bytes before stacks: old files read)
//!   kind 2 RECORDS  n × 20 B, in the order the exits finished (the ring buffer's order):
//!                   start_ns u64 | duration_ns u64 | site number u32 (defined by an earlier KEYS block)
//!   kind 3 END      records u64 | sites u32 | cpus u32 | records dropped on each CPU: cpus × u64
//! footer   16 B   offset of the END block u64 | magic "KVMPREND"
//! ```
//! A file without its END block and footer was cut short (the recorder died): it is refused
//! as truncated, as is any block that ends past the end of the file. A block whose CRC does
//! not match, an unknown kind, or a record naming an undefined site is corrupt.
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use profiler_common::{ExitKey, ExitRecord};

pub const MAGIC: &[u8; 8] = b"KVMPRECS";
pub const FOOTER_MAGIC: &[u8; 8] = b"KVMPREND";
pub const VERSION: u32 = 1;
const HEADER_LEN: u64 = 16;
const BLOCK_HEADER_LEN: usize = 12;
const FOOTER_LEN: u64 = 16;
const KEY_LEN: usize = 48;
const RECORD_LEN: usize = 20;
const KIND_KEYS: u8 = 1;
const KIND_RECORDS: u8 = 2;
const KIND_END: u8 = 3;
/// Records buffered before a block is written: 3 276 records, 64 KiB.
const BLOCK_RECORDS: usize = 65_536 / RECORD_LEN;
/// The largest block a reader accepts: far above what the writer makes, so a corrupt length
/// cannot make the reader allocate gigabytes.
const MAX_BLOCK: u32 = 64 << 20;

/// The file name of the record stream of the recording at `recording`.
pub fn path_for(recording: &Path) -> PathBuf {
    let mut name = recording.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".records");
    recording.with_file_name(name)
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot read the record stream {path} (it must stay beside its recording)")]
    Io { path: String, source: std::io::Error },
    #[error("cannot write the record stream {path}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} is not a kvmprof record stream (no {:?} header)", std::str::from_utf8(MAGIC).unwrap_or_default())]
    NotAStream { path: String },
    #[error("{path} is record stream version {found}, newer than this kvmprof reads (up to {VERSION}): upgrade kvmprof")]
    NewerVersion { path: String, found: u32 },
    #[error("{path} is truncated at byte {len} ({why}): the recording was cut short; record it again")]
    Truncated { path: String, len: u64, why: &'static str },
    #[error("{path} is a corrupt record stream: {why}")]
    Corrupt { path: String, why: String },
}

/// What the END block says: read without reading the records ([`info`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamInfo {
    pub path: PathBuf,
    pub records: u64,
    pub sites: u32,
    /// Records the ring buffer had no room for, per CPU (empty for an import).
    pub dropped_per_cpu: Vec<u64>,
}

impl StreamInfo {
    pub fn dropped(&self) -> u64 {
        self.dropped_per_cpu.iter().sum()
    }
}

/// Takes finished exits one at a time, in order (the live session's ring-buffer reader and
/// the importer feed one).
pub trait RecordSink: Send {
    fn push(&mut self, rec: &ExitRecord);
    /// The final count of records lost before they reached the sink, per CPU (the live
    /// session calls it once, when it finishes).
    fn set_dropped(&mut self, _per_cpu: &[u64]) {}
}

/// Writes a record stream as records arrive: memory is one 64 KiB block plus one entry per
/// distinct exit site (bounded by the in-kernel exit map's size).
pub struct StreamWriter {
    path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    sites: HashMap<ExitKey, u32, foldhash::fast::RandomState>,
    /// Sites defined so far (written, or waiting in `new_sites`).
    defined: u32,
    new_sites: Vec<u8>,
    block: Vec<u8>,
    records: u64,
    dropped_per_cpu: Vec<u64>,
    /// The first write error; later writes are skipped and [`StreamWriter::finish`] returns it.
    error: Option<std::io::Error>,
    /// Where the file's next writeback starts ([`StreamWriter::start_writeback`]).
    writeback_from: u64,
}

const WRITEBACK_BYTES: u64 = 4 << 20;

impl StreamWriter {
    pub fn create(path: &Path) -> Result<StreamWriter, StreamError> {
        let io = |source| StreamError::Write { path: path.display().to_string(), source };
        let mut out = BufWriter::with_capacity(256 << 10, File::create(path).map_err(io)?);
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        out.write_all(&header).map_err(io)?;
        Ok(StreamWriter {
            path: path.to_path_buf(),
            out,
            offset: HEADER_LEN,
            sites: HashMap::default(),
            defined: 0,
            new_sites: Vec::new(),
            block: Vec::with_capacity(BLOCK_RECORDS * RECORD_LEN),
            records: 0,
            dropped_per_cpu: Vec::new(),
            error: None,
            writeback_from: 0,
        })
    }

    pub fn push(&mut self, rec: &ExitRecord) {
        let next = self.defined;
        let site = *self.sites.entry(rec.key).or_insert(next);
        self.push_site(site, rec);
    }

    /// [`StreamWriter::push`] for a caller that numbers the exit sites itself, densely from 0
    /// in the order they first appear (the importer: one hash lookup per exit, not two). A
    /// writer takes either `push` or `push_site`, not both.
    pub fn push_site(&mut self, site: u32, rec: &ExitRecord) {
        if site == self.defined {
            encode_key(&mut self.new_sites, &rec.key);
            self.defined += 1;
        }
        debug_assert!(site < self.defined, "exit sites are numbered densely in order of appearance");
        self.block.extend_from_slice(&rec.start_ns.to_le_bytes());
        self.block.extend_from_slice(&rec.duration_ns.to_le_bytes());
        self.block.extend_from_slice(&site.to_le_bytes());
        self.records += 1;
        if self.block.len() >= BLOCK_RECORDS * RECORD_LEN {
            self.flush_block();
        }
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    fn write_block(&mut self, kind: u8, payload: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let mut head = [0u8; BLOCK_HEADER_LEN];
        head[0] = kind;
        head[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        head[8..12].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        let r = self.out.write_all(&head).and_then(|_| self.out.write_all(payload));
        self.offset += (BLOCK_HEADER_LEN + payload.len()) as u64;
        self.error = r.err();
        self.start_writeback();
    }

    /// Starts writing out what the kernel holds of the file every [`WRITEBACK_BYTES`], without
    /// waiting: the sync in [`StreamWriter::finish`] then waits for the last part only, not
    /// for the whole file (tens of MB for a million exits).
    fn start_writeback(&mut self) {
        let written = self.offset - self.out.buffer().len() as u64;
        if written < self.writeback_from + WRITEBACK_BYTES {
            return;
        }
        use std::os::fd::AsRawFd;
        let fd = self.out.get_ref().as_raw_fd();
        // SAFETY: a plain syscall on this writer's open file descriptor, with a range of it;
        // it touches no memory of this process. A failure (or a kernel without it) only
        // leaves the work to the sync at the end.
        unsafe { libc::sync_file_range(fd, self.writeback_from as i64, (written - self.writeback_from) as i64, libc::SYNC_FILE_RANGE_WRITE) };
        self.writeback_from = written;
    }

    fn flush_block(&mut self) {
        if !self.new_sites.is_empty() {
            let sites = std::mem::take(&mut self.new_sites);
            self.write_block(KIND_KEYS, &sites);
        }
        if !self.block.is_empty() {
            let block = std::mem::take(&mut self.block);
            self.write_block(KIND_RECORDS, &block);
            self.block = block;
            self.block.clear();
        }
    }

    /// Writes the last block, the END block (with the per-CPU drop counts given to
    /// [`RecordSink::set_dropped`]) and the footer, and syncs the file.
    pub fn finish(mut self) -> Result<StreamInfo, StreamError> {
        let dropped_per_cpu = std::mem::take(&mut self.dropped_per_cpu);
        let dropped_per_cpu = &dropped_per_cpu[..];
        self.flush_block();
        let end_at = self.offset;
        let mut end = Vec::new();
        end.extend_from_slice(&self.records.to_le_bytes());
        end.extend_from_slice(&self.defined.to_le_bytes());
        end.extend_from_slice(&(dropped_per_cpu.len() as u32).to_le_bytes());
        for d in dropped_per_cpu {
            end.extend_from_slice(&d.to_le_bytes());
        }
        self.write_block(KIND_END, &end);
        let io = |source| StreamError::Write { path: self.path.display().to_string(), source };
        if let Some(e) = self.error.take() {
            return Err(io(e));
        }
        let mut footer = end_at.to_le_bytes().to_vec();
        footer.extend_from_slice(FOOTER_MAGIC);
        self.out.write_all(&footer).map_err(io)?;
        let file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(StreamInfo { path: self.path, records: self.records, sites: self.defined, dropped_per_cpu: dropped_per_cpu.to_vec() })
    }
}

impl RecordSink for StreamWriter {
    fn push(&mut self, rec: &ExitRecord) {
        StreamWriter::push(self, rec)
    }

    fn set_dropped(&mut self, per_cpu: &[u64]) {
        self.dropped_per_cpu = per_cpu.to_vec();
    }
}

/// A writer shared between the session that feeds it and the recorder that finishes it.
impl RecordSink for std::sync::Arc<std::sync::Mutex<StreamWriter>> {
    fn push(&mut self, rec: &ExitRecord) {
        if let Ok(mut w) = self.lock() {
            w.push(rec);
        }
    }

    fn set_dropped(&mut self, per_cpu: &[u64]) {
        if let Ok(mut w) = self.lock() {
            w.set_dropped(per_cpu);
        }
    }
}

fn encode_key(out: &mut Vec<u8>, k: &ExitKey) {
    for v in [k.rip, k.detail, k.caller] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in [k.tgid, k.tid, k.vcpu, k.reason] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&[k.isa, k.detail_kind, 0, 0]);
    out.extend_from_slice(&k.stack.to_le_bytes());
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn decode_key(b: &[u8]) -> ExitKey {
    ExitKey {
        rip: u64_at(b, 0),
        detail: u64_at(b, 8),
        caller: u64_at(b, 16),
        tgid: u32_at(b, 24),
        tid: u32_at(b, 28),
        vcpu: u32_at(b, 32),
        reason: u32_at(b, 36),
        isa: b[40],
        detail_kind: b[41],
        _pad: [0; 2],
        stack: u32_at(b, 44),
    }
}

struct Reader {
    path: String,
    len: u64,
    file: BufReader<File>,
}

impl Reader {
    fn open(path: &Path) -> Result<Reader, StreamError> {
        let p = path.display().to_string();
        let io = |source| StreamError::Io { path: p.clone(), source };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut r = Reader { path: p, len, file: BufReader::with_capacity(256 << 10, file) };
        let mut header = [0u8; HEADER_LEN as usize];
        if len < 8 || r.file.read_exact(&mut header[..8]).is_err() || &header[..8] != MAGIC {
            return Err(StreamError::NotAStream { path: r.path });
        }
        r.exact(&mut header[8..], 8, "in the header")?;
        let version = u32_at(&header, 8);
        if version > VERSION {
            return Err(StreamError::NewerVersion { path: r.path, found: version });
        }
        if version == 0 {
            return Err(r.corrupt("version 0".into()));
        }
        Ok(r)
    }

    fn corrupt(&self, why: String) -> StreamError {
        StreamError::Corrupt { path: self.path.clone(), why }
    }

    fn exact(&mut self, buf: &mut [u8], at: u64, why: &'static str) -> Result<(), StreamError> {
        if at + buf.len() as u64 > self.len {
            return Err(StreamError::Truncated { path: self.path.clone(), len: self.len, why });
        }
        self.file.read_exact(buf).map_err(|source| StreamError::Io { path: self.path.clone(), source })
    }

    /// The block at `at`: its kind and checked payload (into `payload`).
    fn block(&mut self, at: u64, payload: &mut Vec<u8>) -> Result<u8, StreamError> {
        let mut head = [0u8; BLOCK_HEADER_LEN];
        self.exact(&mut head, at, "in a block header")?;
        let (kind, len, crc) = (head[0], u32_at(&head, 4), u32_at(&head, 8));
        if !(KIND_KEYS..=KIND_END).contains(&kind) || head[1..4] != [0, 0, 0] {
            return Err(self.corrupt(format!("unknown block kind {kind} at byte {at}")));
        }
        if len > MAX_BLOCK {
            return Err(self.corrupt(format!("block at byte {at} claims {len} bytes")));
        }
        payload.resize(len as usize, 0);
        self.exact(payload, at + BLOCK_HEADER_LEN as u64, "in the middle of a block")?;
        if crc32fast::hash(payload) != crc {
            return Err(self.corrupt(format!("block at byte {at} fails its CRC check")));
        }
        Ok(kind)
    }

    fn end_info(&self, payload: &[u8], path: &Path) -> Result<StreamInfo, StreamError> {
        if payload.len() < 16 {
            return Err(self.corrupt("END block too short".into()));
        }
        let cpus = u32_at(payload, 12) as usize;
        if payload.len() != 16 + 8 * cpus {
            return Err(self.corrupt("END block length does not match its CPU count".into()));
        }
        Ok(StreamInfo {
            path: path.to_path_buf(),
            records: u64_at(payload, 0),
            sites: u32_at(payload, 8),
            dropped_per_cpu: (0..cpus).map(|i| u64_at(payload, 16 + 8 * i)).collect(),
        })
    }
}

/// Reads the header, the footer and the END block only: cheap whatever the file's size.
pub fn info(path: &Path) -> Result<StreamInfo, StreamError> {
    let mut r = Reader::open(path)?;
    if r.len < HEADER_LEN + FOOTER_LEN {
        return Err(StreamError::Truncated { path: r.path, len: r.len, why: "no END block" });
    }
    let mut footer = [0u8; FOOTER_LEN as usize];
    r.file.seek(SeekFrom::Start(r.len - FOOTER_LEN)).map_err(|source| StreamError::Io { path: r.path.clone(), source })?;
    r.exact(&mut footer, r.len - FOOTER_LEN, "in the footer")?;
    if &footer[8..] != FOOTER_MAGIC {
        return Err(StreamError::Truncated { path: r.path, len: r.len, why: "no END block" });
    }
    let end_at = u64_at(&footer, 0);
    if end_at < HEADER_LEN || end_at >= r.len - FOOTER_LEN {
        return Err(r.corrupt(format!("the footer points at byte {end_at}")));
    }
    r.file.seek(SeekFrom::Start(end_at)).map_err(|source| StreamError::Io { path: r.path.clone(), source })?;
    let mut payload = Vec::new();
    if r.block(end_at, &mut payload)? != KIND_END {
        return Err(r.corrupt(format!("the footer points at byte {end_at}, which is not the END block")));
    }
    r.end_info(&payload, path)
}

/// Reads every record in order, checking every block, and calls `each(site, start_ns,
/// duration_ns)`; returns what the END block says. Memory: one block and the site table.
pub fn for_each(path: &Path, mut each: impl FnMut(&ExitKey, u64, u64)) -> Result<StreamInfo, StreamError> {
    let mut r = Reader::open(path)?;
    let mut sites: Vec<ExitKey> = Vec::new();
    let mut payload = Vec::new();
    let mut at = HEADER_LEN;
    let mut records = 0u64;
    loop {
        if at >= r.len {
            return Err(StreamError::Truncated { path: r.path, len: r.len, why: "no END block" });
        }
        let kind = r.block(at, &mut payload)?;
        at += (BLOCK_HEADER_LEN + payload.len()) as u64;
        match kind {
            KIND_KEYS => {
                if payload.len() % KEY_LEN != 0 {
                    return Err(r.corrupt("a KEYS block is not a whole number of sites".into()));
                }
                sites.extend(payload.chunks_exact(KEY_LEN).map(decode_key));
            }
            KIND_RECORDS => {
                if payload.len() % RECORD_LEN != 0 {
                    return Err(r.corrupt("a RECORDS block is not a whole number of records".into()));
                }
                for rec in payload.chunks_exact(RECORD_LEN) {
                    let site = u32_at(rec, 16) as usize;
                    let Some(key) = sites.get(site) else {
                        return Err(r.corrupt(format!("record {records} names exit site {site}, of {} defined", sites.len())));
                    };
                    each(key, u64_at(rec, 0), u64_at(rec, 8));
                    records += 1;
                }
            }
            _ => {
                let info = r.end_info(&payload, path)?;
                if info.records != records || info.sites as usize != sites.len() {
                    return Err(r.corrupt(format!(
                        "the END block counts {} records at {} sites, the file holds {records} at {}",
                        info.records,
                        info.sites,
                        sites.len()
                    )));
                }
                if at + FOOTER_LEN != r.len {
                    return Err(r.corrupt(format!("{} bytes follow the END block (expected the 16-byte footer)", r.len - at)));
                }
                return Ok(info);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(rip: u64, start: u64, dur: u64) -> ExitRecord {
        ExitRecord { key: ExitKey { rip, tgid: 1, tid: 2, isa: 1, ..ExitKey::default() }, start_ns: start, duration_ns: dur }
    }

    #[test]
    fn round_trips_in_order_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.records");
        let mut w = StreamWriter::create(&p).unwrap();
        let n = BLOCK_RECORDS as u64 * 2 + 7;
        for i in 0..n {
            w.push(&rec(0x1000 + i % 3, i * 10, i));
        }
        w.set_dropped(&[1, 0, 2]);
        let info = w.finish().unwrap();
        assert_eq!((info.records, info.sites, info.dropped()), (n, 3, 3));
        assert_eq!(super::info(&p).unwrap(), info);
        let mut got = Vec::new();
        for_each(&p, |k, s, d| got.push((k.rip, s, d))).unwrap();
        assert_eq!(got.len() as u64, n);
        assert!(got.iter().enumerate().all(|(i, g)| *g == (0x1000 + i as u64 % 3, i as u64 * 10, i as u64)));
    }

    #[test]
    fn truncated_and_corrupt_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.records");
        let mut w = StreamWriter::create(&p).unwrap();
        for i in 0..100 {
            w.push(&rec(0x1000, i, 1));
        }
        w.finish().unwrap();
        let good = std::fs::read(&p).unwrap();
        std::fs::write(&p, &good[..good.len() - 30]).unwrap();
        assert!(matches!(info(&p), Err(StreamError::Truncated { .. })));
        assert!(matches!(for_each(&p, |_, _, _| {}), Err(StreamError::Truncated { .. })));
        let mut flipped = good.clone();
        flipped[200] ^= 1;
        std::fs::write(&p, &flipped).unwrap();
        assert!(matches!(for_each(&p, |_, _, _| {}), Err(StreamError::Corrupt { .. })));
        std::fs::write(&p, b"hello world, not a stream").unwrap();
        assert!(matches!(info(&p), Err(StreamError::NotAStream { .. })));
    }
}
