//! One tinyvmm run under a live kvmprof session that the network experiments can cut into
//! phases: unlike [`Ctx::profile`] (one recording per run), the traffic runs while the
//! session is serviced here, and a snapshot before and after it gives the traffic's own exits.
use std::os::unix::process::ExitStatusExt;

use super::*;
use crate::live::command::GatedChild;
use crate::live::{detect_source, tracefs, Session, SessionConfig, Target};
use crate::model::recording;

pub(super) struct LiveVm {
    name: String,
    child: GatedChild,
    session: Option<Session>,
    stats_path: PathBuf,
    rec_path: PathBuf,
    /// tinyvmm's stdout and stderr: the guest console and tinyvmm's own summary.
    console: PathBuf,
}

/// What a finished run left: the whole recording and tinyvmm's own statistics.
pub(super) struct Finished {
    pub(super) rec: Profile,
    pub(super) stats: RunStats,
}

impl LiveVm {
    /// Starts `PREFIX... tinyvmm run ARGS --stats-json NAME.stats.json --name NAME` (the
    /// prefix puts it in a network namespace: `ip netns exec NS`, which `exec`s, so the
    /// traced PID is tinyvmm's), traced from its first instruction; its console goes to
    /// NAME.console, where [`LiveVm::wait_console`] looks for the guest's lines.
    pub(super) fn start(ctx: &Ctx, name: &str, prefix: &[String], args: &[String]) -> Result<LiveVm> {
        let rec_path = ctx.out.join(format!("{name}.kvmprof"));
        let stats_path = ctx.out.join(format!("{name}.stats.json"));
        let _ = std::fs::remove_file(&stats_path);
        let mut command: Vec<String> = prefix.to_vec();
        command.extend([ctx.tinyvmm.display().to_string(), "run".into()]);
        command.extend(args.iter().cloned());
        command.extend(["--stats-json".into(), stats_path.display().to_string(), "--name".into(), name.into()]);
        let tracefs = tracefs::ensure_mounted()?;
        let console = ctx.out.join(format!("{name}.console"));
        let _ = std::fs::remove_file(&console);
        // tinyvmm inherits the console file as its stdout and stderr.
        let quiet = Redirect::to(&console)?;
        let spawned = GatedChild::spawn(&command);
        drop(quiet);
        let mut child = spawned?;
        let cfg = SessionConfig { source: detect_source(), target: Target::Process(child.child.id()), records: false, command: Some(command) };
        let session = Session::start(&tracefs, cfg).with_context(|| format!("starting the recording of the {name} run"))?;
        child.release()?;
        Ok(LiveVm { name: name.into(), child, session: Some(session), stats_path, rec_path, console })
    }

    /// Waits (servicing the session) until the guest printed a line starting with `prefix`.
    pub(super) fn wait_console(&mut self, prefix: &str, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.console).unwrap_or_default();
            if text.lines().any(|l| l.starts_with(prefix)) {
                return Ok(());
            }
            if !self.running() {
                bail!("the {} run of tinyvmm ended before the guest printed {prefix}: see {}", self.name, self.console.display());
            }
            if t0.elapsed() >= timeout {
                bail!("the guest of the {} run did not print {prefix} within {} s: see {}", self.name, timeout.as_secs(), self.console.display());
            }
            self.session().poll();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn session(&mut self) -> &mut Session {
        self.session.as_mut().expect("the session lives until finish")
    }

    /// The exits so far (cumulative).
    pub(super) fn snapshot(&mut self) -> Result<Profile> {
        Ok(self.session().snapshot()?)
    }

    /// Runs `work` on another thread while this one services the session every 20 ms.
    pub(super) fn while_running<T: Send>(&mut self, work: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let h = s.spawn(work);
            while !h.is_finished() {
                self.session().poll();
                std::thread::sleep(Duration::from_millis(20));
            }
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Whether tinyvmm still runs.
    pub(super) fn running(&mut self) -> bool {
        matches!(self.child.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the guest to end by itself, then saves the recording as
    /// NAME.kvmprof and reads tinyvmm's statistics. A run that does not end, or ends with a
    /// failure, is an error that says where tinyvmm's output went.
    pub(super) fn finish(self, timeout: Duration) -> Result<Finished> {
        self.finish_accepting(timeout, |_| false)
    }

    /// [`LiveVm::finish`], where a failed run whose statistics `expected` accepts (e.g. a
    /// receiver that timed out because datagrams were dropped) is not an error.
    pub(super) fn finish_accepting(mut self, timeout: Duration, expected: impl Fn(&RunStats) -> bool) -> Result<Finished> {
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = self.child.child.try_wait()? {
                break Some(st);
            }
            if t0.elapsed() >= timeout {
                break None;
            }
            self.session().poll();
            std::thread::sleep(Duration::from_millis(20));
        };
        let Some(status) = status else {
            let _ = self.child.child.kill();
            let _ = self.child.child.wait();
            bail!("the {} run of tinyvmm did not end within {} s: see {}", self.name, timeout.as_secs(), self.console.display());
        };
        let mut rec = self.session.take().expect("finished once").finish()?;
        let code = status.code().unwrap_or(128 + status.signal().unwrap_or(0));
        rec.meta.command_status = Some(code);
        recording::save(&rec, &self.rec_path)?;
        let stats: RunStats = std::fs::read(&self.stats_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .with_context(|| format!("tinyvmm wrote no statistics for the {} run: see {}", self.name, self.console.display()))?;
        if code != 0 && !expected(&stats) {
            bail!("the {} run of tinyvmm failed (exit status {code}, outcome {}): see {}", self.name, stats.outcome_detail, self.console.display());
        }
        if rec.exits.is_empty() {
            bail!("the {} run recorded no exits: is the eBPF exit source working? try `kvmprof check`", self.name);
        }
        Ok(Finished { rec, stats })
    }
}

impl Drop for LiveVm {
    fn drop(&mut self) {
        // An experiment that failed half-way must not leave a guest running (it holds the TAP).
        if self.running() {
            let _ = self.child.child.kill();
            let _ = self.child.child.wait();
        }
    }
}
