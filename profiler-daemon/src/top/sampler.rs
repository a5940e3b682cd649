//! `top`'s source of intervals: a live [`Session`] on a command started for it, a running VMM
//! (`--pid`) or every VM, and the previous snapshot to subtract. The same steps as
//! `kvmprof record` (gated command, guest memory map for callers), but sampled as it goes.
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::command_output::CommandLog;
use super::{Interval, TopOptions};
use crate::live::command::GatedChild;
use crate::live::guest_memory::{self, FeedStatus, Feeder};
use crate::live::targets::check_vm_pid;
use crate::live::{detect_source, require_root, tracefs, Session, SessionConfig, Target};
use crate::model::Profile;

/// Why there is nothing more to trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The command exited with this status (128 + signal if killed).
    Command(i32),
    /// The process given with `--pid` is gone.
    Pid(u32),
}

impl Ended {
    pub fn describe(self) -> String {
        match self {
            Ended::Command(s) => format!("the command exited with status {s}"),
            Ended::Pid(p) => format!("process {p} has exited"),
        }
    }
}

pub struct Sampler {
    session: Option<Session>,
    child: Option<GatedChild>,
    log: Option<CommandLog>,
    feeder: Option<Feeder>,
    pid: Option<u32>,
    label: String,
    prev: Profile,
    prev_at: Instant,
    started: Instant,
    intervals: u64,
    ended: Option<Ended>,
}

/// What is left to say when `top` ends.
pub struct End {
    /// The command's own exit, if it ended by itself.
    ended: Option<Ended>,
    /// Its last lines of output (terminal view only), when it failed.
    log_tail: Vec<String>,
    callers_note: Option<String>,
}

impl End {
    /// Lines for stderr.
    pub fn notes(&self) -> Vec<String> {
        let mut v = Vec::new();
        match self.ended {
            None | Some(Ended::Command(0)) => {}
            Some(e) => v.push(format!("note: {}", e.describe())),
        }
        if !self.log_tail.is_empty() {
            v.push("its last lines of output:".into());
            v.extend(self.log_tail.iter().map(|l| format!("  {l}")));
        }
        v.extend(self.callers_note.clone());
        v
    }
}

/// How long a command `top` started gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

impl Sampler {
    /// Checks the target, starts the command (gated), loads and attaches the programs, and
    /// releases the command. With `quiet_command` the command's output goes to a log.
    pub fn start(opts: &TopOptions, quiet_command: bool) -> Result<Sampler> {
        require_root("top")?;
        if let Some(pid) = opts.pid {
            check_vm_pid(pid)?;
        }
        let tracefs = tracefs::ensure_mounted()?;
        let source = opts.source.unwrap_or_else(detect_source);
        let (command, map_source) = guest_memory::prepare(&opts.command, opts.guest_memory_map.as_deref(), opts.pid)?;
        let log = if quiet_command && !command.is_empty() { Some(CommandLog::create()?) } else { None };
        let mut child = match &log {
            _ if command.is_empty() => None,
            Some(log) => Some(log.redirect_while(|| GatedChild::spawn(&command))??),
            None => Some(GatedChild::spawn(&command)?),
        };
        let target = match (&child, opts.pid) {
            (Some(c), _) => Target::Process(c.child.id()),
            (None, Some(pid)) => Target::Process(pid),
            (None, None) => Target::AllVms,
        };
        let cfg = SessionConfig { source, target, records: false, command: (!opts.command.is_empty()).then(|| opts.command.clone()) };
        let mut session = Session::start(&tracefs, cfg)?;
        let feeder = match (session.guest_memory(), target) {
            (Some(w), Target::Process(t)) => Some(Feeder::start(map_source, w, t)?),
            _ => None,
        };
        if let Some(c) = &mut child {
            c.release()?;
        }
        let label = match (&child, opts.pid) {
            (Some(c), _) => format!("`{}` (PID {})", short_command(&opts.command), c.child.id()),
            (None, Some(pid)) => format!("PID {pid}"),
            (None, None) => "every KVM guest".into(),
        };
        let now = Instant::now();
        Ok(Sampler {
            session: Some(session),
            child,
            log,
            feeder,
            pid: opts.pid,
            label,
            prev: Profile::default(),
            prev_at: now,
            started: now,
            intervals: 0,
            ended: None,
        })
    }

    /// What is traced, for headers.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Whether the programs are still attached (until [`Sampler::sample_last`]).
    pub fn is_live(&self) -> bool {
        self.session.is_some()
    }

    /// Call every ~20 ms: keeps the session serviced (see `Session::poll`) and notices the end
    /// of the command or PID.
    pub fn poll(&mut self) -> Option<Ended> {
        if let Some(s) = &mut self.session {
            s.poll();
        }
        if self.ended.is_none() {
            if let Some(c) = &mut self.child {
                if let Ok(Some(status)) = c.child.try_wait() {
                    self.ended = Some(Ended::Command(status.code().unwrap_or(128 + status.signal().unwrap_or(0))));
                }
            }
            if let Some(p) = self.pid.filter(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                self.ended = Some(Ended::Pid(p));
            }
        }
        self.ended
    }

    /// The interval since the previous sample; the programs stay attached.
    pub fn sample(&mut self) -> Result<Interval> {
        let cur = match &mut self.session {
            Some(s) => s.snapshot()?,
            None => self.prev.clone(),
        };
        Ok(self.next(cur))
    }

    /// The last interval: detaches everything and counts the exits still open (the target
    /// has ended, or `top` is stopping).
    pub fn sample_last(&mut self) -> Result<Interval> {
        let cur = match self.session.take() {
            Some(s) => s.finish()?,
            None => self.prev.clone(),
        };
        Ok(self.next(cur))
    }

    fn next(&mut self, cur: Profile) -> Interval {
        let now = Instant::now();
        self.intervals += 1;
        let iv = Interval::between(&self.prev, &cur, (now - self.prev_at).as_secs_f64(), (now - self.started).as_secs_f64(), self.intervals);
        self.prev = cur;
        self.prev_at = now;
        iv
    }

    /// Detaches (if still attached), stops the command `top` started if it still runs, and
    /// says what is left to say.
    pub fn finish(mut self) -> Result<End> {
        let detached = self.session.take().map(|s| s.finish());
        self.poll();
        if self.ended.is_none() {
            if let Some(c) = &mut self.child {
                stop(&mut c.child);
            }
        }
        let callers_note = match self.feeder.take().map(|f| f.finish()) {
            Some(FeedStatus::Failed(e) | FeedStatus::Unverified(e)) => Some(format!("warning: callers are unknown: {e}")),
            _ => None,
        };
        let failed = matches!(self.ended, Some(Ended::Command(s)) if s != 0);
        let log_tail = match &self.log {
            Some(log) if failed => log.tail(10),
            _ => Vec::new(),
        };
        detached.transpose()?;
        Ok(End { ended: self.ended, log_tail, callers_note })
    }
}

/// The command for a one-line header: the program's file name, then its arguments.
fn short_command(argv: &[String]) -> String {
    let program = argv.first().map(|p| Path::new(p).file_name().map_or(p.clone(), |n| n.to_string_lossy().into_owned()));
    program.into_iter().chain(argv.iter().skip(1).cloned()).collect::<Vec<_>>().join(" ")
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`]: the command was started for `top` and does not
/// outlive it.
fn stop(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill has no memory preconditions; `pid` is our own unreaped child, so the
        // PID cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}
