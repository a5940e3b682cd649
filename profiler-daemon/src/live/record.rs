//! `kvmprof record`: attach, run or follow the VM, write a recording (checkpointed while it
//! runs: see `checkpoint`).
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::checkpoint::Checkpointer;
use super::command::GatedChild;
use super::guest_memory::{self, FeedStatus, Feeder};
use super::session::{detect_source, Session, SessionConfig, Target};
use super::targets::check_vm_pid;
use super::{require_root, tracefs};
use crate::model::record_stream::{self, StreamInfo, StreamWriter};
use crate::model::{recording, GuestMemoryOrigin, Profile, Source};

pub struct RecordOptions {
    pub output: PathBuf,
    /// The VMM's guest memory map file, for caller attribution (see `guest_memory`).
    pub guest_memory_map: Option<PathBuf>,
    pub pid: Option<u32>,
    pub duration: Option<Duration>,
    pub records: bool,
    /// The records ring buffer's size in bytes (`--records-buffer`); None: the default.
    pub records_buffer: Option<u32>,
    pub source: Option<Source>,
    pub command: Vec<String>,
    pub quiet: bool,
    /// Run-detection gap (`--max-gap`); None: the source's default.
    pub max_gap_ns: Option<u64>,
    /// Guest stacks to walk at each exit (`--stack-depth` above 1); None: the caller only.
    pub stacks: Option<super::stacks::StackSetup>,
}

/// Records a command, a running VMM (`pid`) or every VM, until the command or PID exits,
/// `duration` passes, or SIGINT/SIGTERM arrives; writes the recording and returns it.
pub fn run(opts: &RecordOptions) -> Result<Profile> {
    if opts.pid.is_some() && !opts.command.is_empty() {
        bail!("give either a PID or a command, not both");
    }
    require_root("record")?;
    if let Some(pid) = opts.pid {
        check_vm_pid(pid)?;
    }
    check_writable(&opts.output)?;
    let tracefs = tracefs::ensure_mounted()?;
    let source = opts.source.unwrap_or_else(detect_source);

    let (command, map_source) = guest_memory::prepare(&opts.command, opts.guest_memory_map.as_deref(), opts.pid)?;
    let mut child = if command.is_empty() { None } else { Some(GatedChild::spawn(&command)?) };
    let target = match (&child, opts.pid) {
        (Some(c), _) => c.child.id(),
        (None, Some(pid)) => pid,
        (None, None) => 0,
    };
    let cfg = SessionConfig {
        source,
        target: if target == 0 { Target::AllVms } else { Target::Process(target) },
        records: opts.records,
        command: (!opts.command.is_empty()).then(|| opts.command.clone()),
    };
    let mut session = Session::start_with_stacks(&tracefs, cfg, opts.max_gap_ns, opts.records_buffer, opts.stacks.as_ref())?;
    let stream = if opts.records { Some(start_record_stream(&mut session, &opts.output)?) } else { None };
    let feeder = match (session.guest_memory(), target) {
        (Some(w), t) if t != 0 => Some(Feeder::start(map_source, w, t)?),
        _ => None,
    };

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("cannot install the signal handler")?;
    }
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
    let mut checkpoint = Checkpointer::new(&opts.output);
    loop {
        session.poll();
        checkpoint.tick(&mut session, opts.quiet);
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
        if let Some(p) = opts.pid.filter(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            if !opts.quiet {
                eprintln!("kvmprof: PID {p} exited: recording stopped");
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut rec = session.finish()?;
    let map_status = feeder.map(|f| (f.source().describe(), f.finish()));
    if let Some(c) = &mut child {
        if command_status.is_none() {
            // Stopped by --duration or a signal: the command keeps its own fate (a terminal
            // Ctrl-C reached it too); wait for it briefly so its exit is recorded.
            command_status = wait_briefly(&mut c.child);
        }
    }

    rec.meta.command_status = command_status;
    // A record stream that could not be completed (disk full) must not cost the aggregate:
    // the recording is saved without it, then the error is reported.
    let stream_status = stream.map(|s| finish_record_stream(s, &opts.output));
    if let Some(Ok(info)) = &stream_status {
        rec.records_file = Some(info.clone());
    }
    match &map_status {
        Some((_, FeedStatus::Found { how, .. })) => rec.meta.guest_memory = Some(GuestMemoryOrigin::Verified(how.clone())),
        Some((_, FeedStatus::Unverified(why))) => rec.meta.guest_memory = Some(GuestMemoryOrigin::Unverified(why.clone())),
        _ => {}
    }
    recording::save(&rec, &opts.output)?;
    if let Some(Err(e)) = stream_status {
        return Err(e.context(format!("{} is saved without its records", opts.output.display())));
    }
    if !opts.quiet {
        summarize(&rec, &opts.output);
    }
    match map_status {
        // The recording is saved; a bad map is still an error the user must see.
        Some((what, FeedStatus::Failed(e))) => bail!("callers are unknown: {e} (map: {what})"),
        Some((_, FeedStatus::Unverified(why))) if !opts.quiet => eprintln!("kvmprof: warning: callers are [unknown]: {why}"),
        Some((what, FeedStatus::NeverArrived)) if !opts.quiet => {
            eprintln!("kvmprof: warning: the guest memory map ({what}) never arrived: callers are unknown")
        }
        _ => {}
    }
    Ok(rec)
}

/// `--records`: the session's records go to a stream file beside the output as they arrive
/// (a temporary name until the recording is complete).
fn start_record_stream(session: &mut Session, output: &Path) -> Result<Arc<Mutex<StreamWriter>>> {
    let tmp = stream_tmp_path(output);
    let writer = Arc::new(Mutex::new(StreamWriter::create(&tmp)?));
    session.set_record_sink(Box::new(Arc::clone(&writer)));
    Ok(writer)
}

fn stream_tmp_path(output: &Path) -> PathBuf {
    let mut p = record_stream::path_for(output).into_os_string();
    p.push(".tmp");
    PathBuf::from(p)
}

/// Ends the stream (after `Session::finish`, which sent it the last records and the drop
/// counts) and moves it to its final name, next to the recording.
fn finish_record_stream(stream: Arc<Mutex<StreamWriter>>, output: &Path) -> Result<StreamInfo> {
    let tmp = stream_tmp_path(output);
    let writer = Arc::try_unwrap(stream).ok().and_then(|m| m.into_inner().ok()).context("the record stream is still in use")?;
    let mut info = writer.finish()?;
    let path = record_stream::path_for(output);
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
    info.path = path;
    Ok(info)
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

fn summarize(rec: &Profile, path: &Path) {
    let secs = rec.meta.end_unix_ns.saturating_sub(rec.meta.start_unix_ns) as f64 / 1e9;
    eprintln!(
        "kvmprof: {} exits at {} distinct (rip, reason, port) in {secs:.2} s, source {} -> {}",
        rec.total_exits(),
        rec.exits.len(),
        rec.meta.source,
        path.display()
    );
    let m = &rec.meta;
    if m.records_dropped > 0 {
        eprintln!("kvmprof: warning: {} records did not fit in the ring buffer (they are in the totals, not in the record list)", m.records_dropped);
    }
    if let Some(s) = &rec.records_file {
        eprintln!("kvmprof: {} records -> {}", s.records, s.path.display());
    }
    if m.exit_keys_full > 0 || m.threads_full > 0 {
        eprintln!("kvmprof: warning: in-kernel maps were full: {} exits and {} thread events were not counted", m.exit_keys_full, m.threads_full);
    }
    if let Some(s) = m.command_status.filter(|s| *s != 0) {
        eprintln!("kvmprof: note: the command exited with status {s}");
    }
}
