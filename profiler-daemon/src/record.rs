//! `kvmprof record`: attach, run or follow the VM, write a recording.
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::recording::{Meta, Recording};
use crate::tracefs;
use crate::guest_memory::{self, FeedStatus, Feeder};
use crate::tracer::{require_root, Source, Tracer, TracerConfig};

pub struct RecordOptions {
    pub output: PathBuf,
    pub pid: Option<u32>,
    pub duration: Option<Duration>,
    pub records: bool,
    pub source: Option<Source>,
    pub command: Vec<String>,
    pub quiet: bool,
}

/// Fails unless `pid` is a live process holding a KVM VM file descriptor.
pub fn check_vm_pid(pid: u32) -> Result<()> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if pid == 0 || !proc_dir.exists() {
        bail!("no process with PID {pid}");
    }
    let comm = fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
    let fds = fs::read_dir(proc_dir.join("fd")).with_context(|| format!("cannot list the file descriptors of PID {pid}"))?;
    let is_vm = fds.flatten().any(|fd| fs::read_link(fd.path()).map(|t| t.to_string_lossy() == "anon_inode:kvm-vm").unwrap_or(false));
    if !is_vm {
        bail!("process {pid} ({}) is not a KVM VM: it holds no KVM VM file descriptor (anon_inode:kvm-vm)", comm.trim());
    }
    Ok(())
}

/// A child that waits until the programs are attached: its first instruction is already
/// traced, and it can be filtered by PID from the start. `Command::spawn` returns only after
/// `exec`, so the wait happens in a tiny `sh` that then `exec`s the command under the same PID.
struct GatedChild {
    child: Child,
    gate: Option<std::fs::File>,
}

const GATE_FD: i32 = 3;
const TRAMPOLINE: &str = "read -r _ <&3 || exit 125; exec 3<&-; exec \"$0\" \"$@\"";

impl GatedChild {
    fn spawn(argv: &[String]) -> Result<GatedChild> {
        resolve_command(&argv[0])?;
        let mut fds = [0i32; 2];
        // SAFETY: fds is a valid 2-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            bail!("pipe: {}", std::io::Error::last_os_error());
        }
        let (rd, wr) = (fds[0], fds[1]);
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(TRAMPOLINE).args(argv);
        // SAFETY: dup2 and fcntl are async-signal-safe. The pipe may itself be fd 3, where
        // dup2 is a no-op, so CLOEXEC is cleared explicitly for sh to inherit it.
        unsafe {
            cmd.pre_exec(move || {
                if rd != GATE_FD && libc::dup2(rd, GATE_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::fcntl(GATE_FD, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        // SAFETY: rd is ours; the child has its own copy.
        unsafe { libc::close(rd) };
        // SAFETY: wr is a valid fd we own from here on.
        let gate = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(wr) };
        let child = spawned.with_context(|| format!("cannot run {}", argv[0]))?;
        Ok(GatedChild { child, gate: Some(gate) })
    }

    fn release(&mut self) -> Result<()> {
        use std::io::Write;
        if let Some(mut g) = self.gate.take() {
            g.write_all(b"go\n").context("cannot start the command")?;
        }
        Ok(())
    }
}

/// Fails early, with the usual shell wording, when the command cannot be found.
fn resolve_command(name: &str) -> Result<()> {
    let runnable = |p: &Path| p.is_file() && fs::metadata(p).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0).unwrap_or(false);
    if name.contains('/') {
        if runnable(Path::new(name)) {
            return Ok(());
        }
        bail!("cannot run {name}: no such executable file");
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| runnable(&d.join(name))) {
        return Ok(());
    }
    bail!("cannot run {name}: command not found in PATH")
}

impl Drop for GatedChild {
    fn drop(&mut self) {
        // A gate closed unopened makes the trampoline's read fail: it exits without running.
        self.gate.take();
    }
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string()
}

pub fn run(opts: &RecordOptions) -> Result<i32> {
    run_with_map(opts, None)
}

/// `run`, with the guest memory map for caller attribution (`--guest-memory-map`; see
/// `guest_memory` for where the map comes from without it).
pub fn run_with_map(opts: &RecordOptions, guest_memory_map: Option<&Path>) -> Result<i32> {
    if opts.pid.is_some() && !opts.command.is_empty() {
        bail!("give either --pid or a command after --, not both");
    }
    require_root("record")?;
    if let Some(pid) = opts.pid {
        check_vm_pid(pid)?;
    }
    check_writable(&opts.output)?;
    let tracefs = tracefs::ensure_mounted()?;
    let source = opts.source.unwrap_or_else(Source::detect);

    let (command, map_source) = guest_memory::prepare(&opts.command, guest_memory_map, opts.pid)?;
    let mut child = if command.is_empty() { None } else { Some(GatedChild::spawn(&command)?) };
    let target = match (&child, opts.pid) {
        (Some(c), _) => c.child.id(),
        (None, Some(pid)) => pid,
        (None, None) => 0,
    };
    let mut tracer = Tracer::start(&tracefs, &TracerConfig { source, target_tgid: target, stream_records: opts.records })?;
    let feeder = match (tracer.guest_memory(), target) {
        (Some(w), t) if t != 0 => Some(Feeder::start(map_source, w, t)?),
        _ => None,
    };

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("cannot install the signal handler")?;
    }
    let start_unix_ns = unix_ns();
    let started = Instant::now();
    if let Some(c) = &mut child {
        c.release()?;
    }
    if !opts.quiet {
        let what = match (&child, opts.pid) {
            (Some(_), _) => format!("`{}`", opts.command.join(" ")),
            (None, Some(pid)) => format!("PID {pid}"),
            (None, None) => "every KVM guest".to_string(),
        };
        eprintln!("kvmprof: recording {what} (source: {}); Ctrl-C to stop", source.name());
    }

    let mut command_status = None;
    loop {
        tracer.drain_records();
        tracer.tick();
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if let Some(c) = &mut child {
            if let Some(status) = c.child.try_wait()? {
                command_status = Some(status.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)));
                break;
            }
        }
        if opts.pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let end_unix_ns = unix_ns();
    let collected = tracer.finish()?;
    let map_status = feeder.map(|f| (f.source().describe(), f.finish()));
    if let Some(c) = &mut child {
        if command_status.is_none() {
            // Stopped by --duration or a signal: the command keeps its own fate (a terminal
            // Ctrl-C reached it too); wait for it briefly so its exit is recorded.
            command_status = wait_briefly(&mut c.child);
        }
    }

    let meta = Meta {
        source: source.name().into(),
        origin: "live".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        kernel: kernel_release(),
        host: hostname(),
        start_unix_ns,
        end_unix_ns,
        pid: (target != 0).then_some(target),
        command: (!opts.command.is_empty()).then(|| opts.command.clone()),
        command_status,
        records_requested: opts.records,
        records_dropped: collected.records_dropped,
        exit_keys_full: collected.exit_keys_full,
        threads_full: collected.threads_full,
        unfinished_exits: 0,
    };
    let rec = collected.aggregate.into_recording(meta, collected.threads);
    rec.save(&opts.output)?;
    if !opts.quiet {
        summarize(&rec, &opts.output);
    }
    match map_status {
        // The recording is saved; a bad map is still an error the user must see.
        Some((what, FeedStatus::Failed(e))) => bail!("callers are unknown: {e} (map: {what})"),
        Some((what, FeedStatus::NeverArrived)) if !opts.quiet => {
            eprintln!("kvmprof: warning: the guest memory map ({what}) never arrived: callers are unknown")
        }
        _ => {}
    }
    Ok(0)
}

fn wait_briefly(child: &mut Child) -> Option<i32> {
    for _ in 0..50 {
        if let Ok(Some(s)) = child.try_wait() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn check_writable(path: &Path) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!("cannot write {}: directory {} does not exist", path.display(), dir.display());
    }
    if path.is_dir() {
        bail!("cannot write {}: it is a directory", path.display());
    }
    Ok(())
}

fn summarize(rec: &Recording, path: &Path) {
    let exits: u64 = rec.exits.iter().map(|e| e.count).sum();
    let secs = rec.meta.end_unix_ns.saturating_sub(rec.meta.start_unix_ns) as f64 / 1e9;
    eprintln!(
        "kvmprof: {exits} exits at {} distinct (rip, reason, port) in {secs:.2} s, source {} -> {}",
        rec.exits.len(),
        rec.meta.source,
        path.display()
    );
    let m = &rec.meta;
    if m.records_dropped > 0 {
        eprintln!("kvmprof: warning: {} records did not fit in the ring buffer (they are in the totals, not in the record list)", m.records_dropped);
    }
    if m.exit_keys_full > 0 || m.threads_full > 0 {
        eprintln!("kvmprof: warning: in-kernel maps were full: {} exits and {} thread events were not counted", m.exit_keys_full, m.threads_full);
    }
    if let Some(s) = m.command_status.filter(|s| *s != 0) {
        eprintln!("kvmprof: note: the command exited with status {s}");
    }
}
