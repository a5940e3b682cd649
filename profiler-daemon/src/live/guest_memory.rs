//! The VMM's guest memory map (guest-physical -> host-virtual), and reading guest memory
//! through `/proc/PID/mem` with it.
//!
//! Interface (`kvmprof record`):
//! - `--guest-memory-map FILE`: a JSON file
//!   `{"pid": N (optional), "regions": [{"guest_phys": "0x0", "size": N, "host_virt": "0x7f.."}]}`
//!   (numbers or hex strings) — the format tinyvmm's `--memory-map FILE` writes. With `--pid`
//!   the file must exist; with a command, kvmprof waits for the command to (re)write it.
//! - `record -- tinyvmm run ...` without it: kvmprof adds `--memory-map FIFO` to tinyvmm's
//!   arguments, with a named pipe of its own. tinyvmm writes its map there before the vCPU
//!   starts, and opening a pipe blocks until kvmprof is reading, so the map reaches the kernel
//!   within microseconds of being written, before the guest's first instruction in practice.
//!   (A regular file would have to be polled: exits in the polling gap would lose callers.)
//! - QEMU without a map (`record -- qemu-system-x86_64 ...` or `--pid` of a QEMU): found in
//!   its `/proc/PID/maps` (with QMP's layout when it has a `-qmp unix:` socket) and used only
//!   once verified against its `-kernel` image (`qemu_memory`); else callers are `[unknown]`
//!   and the recording says why.
//! - Other VMMs without a map: callers are `[unknown]`. Guessing from /proc/PID/maps (the
//!   largest shared anonymous mapping) without anything to check it against is not done.
//!
//! The in-kernel reader (eBPF) does the real work at each exit; this module's
//! `/proc/PID/mem` reader uses the same translation code (`profiler_common::guest`) to check
//! a map against the live process before it is trusted, and to walk frame chains in user space.
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use profiler_common::guest::{GuestMemMap, MemRegion, MAX_REGIONS};
use serde_json::Value;

use super::session::GuestMemoryMap;

/// A parsed memory-map file.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryMap {
    pub pid: Option<u32>,
    pub map: GuestMemMap,
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        // "0x7f.." in hex, else decimal.
        Value::String(s) if s.starts_with("0x") || s.starts_with("0X") => profiler_common::parse_hex(s),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

impl MemoryMap {
    /// Parses and checks a memory map: 1 to 8 non-empty regions that do not overflow or
    /// overlap in guest-physical space.
    pub fn parse(text: &str) -> Result<MemoryMap, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
        let pid = match v.get("pid") {
            None | Some(Value::Null) => None,
            Some(p) => Some(number(p).and_then(|p| u32::try_from(p).ok()).ok_or("\"pid\" is not a process id")?),
        };
        let regions = v.get("regions").and_then(Value::as_array).ok_or("no \"regions\" array")?;
        if regions.is_empty() || regions.len() > MAX_REGIONS {
            return Err(format!("{} regions; expected 1 to {MAX_REGIONS}", regions.len()));
        }
        let mut map = GuestMemMap { count: regions.len() as u32, ..GuestMemMap::default() };
        for (i, r) in regions.iter().enumerate() {
            let field = |name: &str| r.get(name).and_then(number).ok_or_else(|| format!("region {i}: missing or bad \"{name}\""));
            let region = MemRegion { guest_phys: field("guest_phys")?, size: field("size")?, host_virt: field("host_virt")? };
            if region.size == 0 || region.guest_phys.checked_add(region.size).is_none() || region.host_virt.checked_add(region.size).is_none() {
                return Err(format!("region {i}: empty or wraps around"));
            }
            for (j, o) in map.regions[..i].iter().enumerate() {
                if region.guest_phys < o.guest_phys + o.size && o.guest_phys < region.guest_phys + region.size {
                    return Err(format!("regions {j} and {i} overlap"));
                }
            }
            map.regions[i] = region;
        }
        Ok(MemoryMap { pid, map })
    }

    pub fn load(path: &Path) -> Result<MemoryMap> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read guest memory map {}", path.display()))?;
        MemoryMap::parse(&text).map_err(|why| anyhow!("guest memory map {} is not valid: {why}", path.display()))
    }
}

/// Guest memory of a live VMM, read through `/proc/PID/mem`.
pub struct ProcMem {
    mem: File,
    map: GuestMemMap,
}

impl ProcMem {
    pub fn open(pid: u32, map: &GuestMemMap) -> Result<ProcMem> {
        let mem = File::open(format!("/proc/{pid}/mem")).with_context(|| format!("cannot open /proc/{pid}/mem"))?;
        Ok(ProcMem { mem, map: *map })
    }

    /// One u64 at guest-physical `gpa`.
    pub fn read_phys(&self, gpa: u64) -> Option<u64> {
        let hva = self.map.host_addr(gpa, 8)?;
        let mut b = [0u8; 8];
        self.mem.read_exact_at(&mut b, hva).ok()?;
        Some(u64::from_le_bytes(b))
    }

    /// Fails unless every region's first and last bytes are readable in the process: a map
    /// of another process, or a garbage one, is rejected before the kernel trusts it.
    pub fn check(&self, pid: u32) -> Result<()> {
        for r in &self.map.regions[..self.map.count as usize] {
            for gpa in [r.guest_phys, r.guest_phys + r.size.saturating_sub(8)] {
                if self.read_phys(gpa).is_none() {
                    bail!(
                        "guest RAM at guest-physical {gpa:#x} should be at host address {:#x} in process {pid}, but that is not readable there: the memory map does not belong to this process",
                        self.map.host_addr(gpa, 1).unwrap_or(0)
                    );
                }
            }
        }
        Ok(())
    }
}

/// Where the map of a recorded command comes from.
pub enum MapSource {
    /// None known: callers stay unknown.
    None,
    /// A file the user named: already there (`--pid`), or to be (re)written by the command.
    File { path: PathBuf, wait_for_change: bool },
    /// kvmprof's own named pipe, handed to tinyvmm as `--memory-map`.
    Fifo { dir: PathBuf, path: PathBuf },
    /// A QEMU: found in its /proc/PID/maps and verified (`qemu_memory`); with `--pid`,
    /// already found before recording starts, so it is in the kernel from the first exits.
    Qemu(Option<super::qemu_memory::Found>),
}

impl MapSource {
    pub fn describe(&self) -> String {
        match self {
            MapSource::None => "none".into(),
            MapSource::File { path, .. } => path.display().to_string(),
            MapSource::Fifo { .. } => "tinyvmm --memory-map".into(),
            MapSource::Qemu(_) => "QEMU's /proc/PID/maps, verified".into(),
        }
    }
}

/// Decides where the map comes from and, for tinyvmm, adds `--memory-map FIFO` to its
/// arguments. Returns the command to run.
pub fn prepare(command: &[String], user_map: Option<&Path>, pid: Option<u32>) -> Result<(Vec<String>, MapSource)> {
    if let Some(path) = user_map {
        if pid.is_some() && !path.exists() {
            bail!("guest memory map {} does not exist", path.display());
        }
        return Ok((command.to_vec(), MapSource::File { path: path.to_path_buf(), wait_for_change: pid.is_none() }));
    }
    let is_qemu = match (command.first(), pid) {
        (Some(c), _) => super::qemu_memory::is_qemu(Path::new(c)),
        (None, Some(p)) => super::qemu_memory::pid_is_qemu(p),
        (None, None) => false,
    };
    if is_qemu {
        let found = pid.and_then(|p| super::qemu_memory::discover(p).ok());
        return Ok((command.to_vec(), MapSource::Qemu(found)));
    }
    let is_tinyvmm = command.first().and_then(|c| Path::new(c).file_name()).is_some_and(|n| n == "tinyvmm") && command.get(1).is_some_and(|s| s == "run");
    if !is_tinyvmm {
        return Ok((command.to_vec(), MapSource::None));
    }
    // tinyvmm already told to write its map somewhere: wait for that file.
    if let Some(i) = command.iter().position(|a| a == "--memory-map" || a.starts_with("--memory-map=")) {
        let path = match command[i].strip_prefix("--memory-map=") {
            Some(p) => PathBuf::from(p),
            None => PathBuf::from(command.get(i + 1).context("tinyvmm --memory-map needs a FILE")?),
        };
        return Ok((command.to_vec(), MapSource::File { path, wait_for_change: true }));
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("kvmprof-{}-{nanos}", std::process::id()));
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("memory-map");
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).context("temporary path")?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_dir(&dir);
        bail!("cannot create a named pipe for tinyvmm's memory map: {e}");
    }
    let mut argv = command.to_vec();
    argv.splice(2..2, ["--memory-map".to_string(), path.display().to_string()]);
    Ok((argv, MapSource::Fifo { dir, path }))
}

/// What became of the map.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedStatus {
    NoSource,
    Set { regions: u32 },
    NeverArrived,
    Failed(String),
    /// Found automatically (QEMU) and verified: how, in one line.
    Found { regions: u32, how: String },
    /// Nothing verifiable was found (QEMU): why, in one line. Callers are `[unknown]`.
    Unverified(String),
}

/// Reads the map (waiting for it if needed), checks it against the process and stores it in
/// the kernel, on a thread of its own so that recording is not held up.
pub struct Feeder {
    source: Arc<MapSource>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<FeedStatus>>,
}

fn install(text: &str, what: &str, tgid: u32, writer: &mut GuestMemoryMap) -> Result<u32> {
    let m = MemoryMap::parse(text).map_err(|why| anyhow!("guest memory map {what} is not valid: {why}"))?;
    if let Some(pid) = m.pid.filter(|p| *p != tgid) {
        bail!("guest memory map {what} is of process {pid}, not of the traced process {tgid}");
    }
    ProcMem::open(tgid, &m.map)?.check(tgid).with_context(|| format!("guest memory map {what}"))?;
    writer.set(tgid, &m.map)?;
    Ok(m.map.count)
}

type Stamp = Option<(u64, i64, i64, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

impl Feeder {
    /// With `--pid` (the map is already there) this checks and installs it before returning,
    /// so a bad map is an error before recording starts.
    pub fn start(source: MapSource, mut writer: GuestMemoryMap, tgid: u32) -> Result<Feeder> {
        let source = Arc::new(source);
        let stop = Arc::new(AtomicBool::new(false));
        if let MapSource::Qemu(found) = &*source {
            // A running QEMU (`--pid`) usually verified before the session started: the map
            // goes into the kernel at once.
            if let Some(found) = found {
                writer.set(tgid, &found.map)?;
                let (regions, how) = (found.map.count, found.how.clone());
                let thread = std::thread::spawn(move || FeedStatus::Found { regions, how });
                return Ok(Feeder { source, stop, thread: Some(thread) });
            }
            let thread = std::thread::spawn({
                let stop = Arc::clone(&stop);
                move || feed_qemu(writer, tgid, &stop)
            });
            return Ok(Feeder { source, stop, thread: Some(thread) });
        }
        if let MapSource::File { path, wait_for_change: false } = &*source {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read guest memory map {}", path.display()))?;
            let n = install(&text, &path.display().to_string(), tgid, &mut writer)?;
            let thread = std::thread::spawn(move || FeedStatus::Set { regions: n });
            return Ok(Feeder { source, stop, thread: Some(thread) });
        }
        let (src, stop2) = (Arc::clone(&source), Arc::clone(&stop));
        let initial = match &*source {
            MapSource::File { path, .. } => stamp(path),
            _ => None,
        };
        let thread = std::thread::spawn(move || {
            // Real-time priority for this short-lived waiter: the guest starts right after the
            // VMM writes its map, and exits before the map is in the kernel get no caller. On a
            // busy host an ordinary thread can take milliseconds to be woken (measured: ~300
            // early exits unattributed under load 3 on 2 cores); SCHED_FIFO wakes at once.
            // Failure (no privilege) just leaves the default policy.
            let param = libc::sched_param { sched_priority: 10 };
            // SAFETY: plain syscall on the calling thread (pid 0) with a valid parameter.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
            let r = match &*src {
                MapSource::None | MapSource::Qemu(_) => return FeedStatus::NoSource,
                // Blocks until tinyvmm opens the pipe, then reads to its close.
                MapSource::Fifo { path, .. } => std::fs::read_to_string(path).ok().filter(|t| !t.is_empty()).map(|t| install(&t, "from tinyvmm", tgid, &mut writer)),
                MapSource::File { path, .. } => poll_file(path, initial, &stop2).map(|t| install(&t, &path.display().to_string(), tgid, &mut writer)),
            };
            match r {
                None => FeedStatus::NeverArrived,
                Some(Ok(n)) => FeedStatus::Set { regions: n },
                Some(Err(e)) => FeedStatus::Failed(format!("{e:#}")),
            }
        });
        Ok(Feeder { source, stop, thread: Some(thread) })
    }

    pub fn source(&self) -> &MapSource {
        &self.source
    }

    /// Stops waiting and says what happened.
    pub fn finish(mut self) -> FeedStatus {
        self.stop.store(true, Ordering::Relaxed);
        if let MapSource::Fifo { path, .. } = &*self.source {
            // A reader still blocked in open() (the command never opened the pipe) is released
            // by a writer that opens and closes at once; with no reader this fails: fine.
            let _ = std::fs::OpenOptions::new().write(true).custom_flags_nonblock().open(path);
        }
        let status = self.thread.take().and_then(|t| t.join().ok()).unwrap_or(FeedStatus::NeverArrived);
        self.cleanup();
        status
    }

    fn cleanup(&self) {
        if let MapSource::Fifo { dir, path } = &*self.source {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.cleanup();
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NONBLOCK)
    }
}

/// Tries to find and verify QEMU's map until it succeeds or recording stops (a QEMU started
/// by kvmprof has no guest in RAM until its loader ran; a multiboot image is copied in by
/// firmware a few seconds later).
fn feed_qemu(mut writer: GuestMemoryMap, tgid: u32, stop: &AtomicBool) -> FeedStatus {
    loop {
        let why = match super::qemu_memory::discover(tgid) {
            Ok(found) => match writer.set(tgid, &found.map) {
                Ok(()) => return FeedStatus::Found { regions: found.map.count, how: found.how },
                Err(e) => format!("{e:#}"),
            },
            Err(why) => why,
        };
        if stop.load(Ordering::Relaxed) {
            return FeedStatus::Unverified(why);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `path` to be (re)written, then returns it once it parses (the writer may still
/// be mid-write when the change is first seen).
fn poll_file(path: &Path, initial: Stamp, stop: &AtomicBool) -> Option<String> {
    let mut changed_at: Option<Instant> = None;
    let mut last = String::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            return changed_at.map(|_| last);
        }
        if changed_at.is_none() && stamp(path).is_some() && stamp(path) != initial {
            changed_at = Some(Instant::now());
        }
        if let Some(t) = changed_at {
            last = std::fs::read_to_string(path).unwrap_or_default();
            if MemoryMap::parse(&last).is_ok() || t.elapsed() > Duration::from_millis(500) {
                return Some(last);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
