//! Running tinyvmm under the recorder: finding it, progress, quiet output, one profiled run.
use super::*;

/// Finds tinyvmm: `--tinyvmm PATH`, else beside the running kvmprof binary.
pub fn find_tinyvmm(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("tinyvmm not found at {}", p.display());
    }
    let exe = std::env::current_exe().context("cannot find the running kvmprof binary")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    // Test binaries live in target/<profile>/deps: tinyvmm is one level up.
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let p = d.join("tinyvmm");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "tinyvmm not found next to kvmprof ({}): build it with `cargo build --release -p vmm`, or say where it is",
        dir.join("tinyvmm").display()
    )
}

pub(super) struct Progress {
    pub(super) on: bool,
    pub(super) tty: bool,
    pub(super) step: usize,
    pub(super) total: usize,
    pub(super) started: Instant,
}

impl Progress {
    pub(super) fn say(&mut self, what: &str) {
        self.step += 1;
        if !self.on {
            return;
        }
        let t = self.started.elapsed().as_secs_f64();
        let line = format!("kvmprof demo [{}/{}] {t:5.1}s  {what}", self.step, self.total);
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[K{line}");
        } else {
            let _ = writeln!(e, "{line}");
        }
        let _ = e.flush();
    }

    pub(super) fn done(&self) {
        if self.on && self.tty {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
        }
    }
}

/// One profiled tinyvmm run: its recording, its own statistics, and the CPU it used.
pub(super) struct Run {
    pub(super) rec: Profile,
    pub(super) stats: RunStats,
    pub(super) cpu_ns: u64,
}

pub(super) fn children_cpu_ns() -> u64 {
    // SAFETY: rusage is plain integers: all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we pass, which lives for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// While alive, this process's stdout and stderr go to a log file, so tinyvmm (which
/// inherits them) does not print its statistics between the demo's progress lines.
pub(super) struct Redirect {
    pub(super) saved: [i32; 2],
}

impl Redirect {
    pub(super) fn to(path: &Path) -> Result<Redirect> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let mut saved = [-1; 2];
        for (i, fd) in [1, 2].into_iter().enumerate() {
            // SAFETY: plain fd duplication; the saved copies are restored and closed in Drop.
            unsafe {
                saved[i] = libc::dup(fd);
                libc::dup2(f.as_raw_fd(), fd);
            }
        }
        Ok(Redirect { saved })
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        for (i, fd) in [1, 2].into_iter().enumerate() {
            if self.saved[i] >= 0 {
                // SAFETY: restores the descriptors saved in `to`.
                unsafe {
                    libc::dup2(self.saved[i], fd);
                    libc::close(self.saved[i]);
                }
            }
        }
    }
}

pub(super) struct Ctx {
    pub(super) tinyvmm: PathBuf,
    pub(super) out: PathBuf,
    pub(super) log: PathBuf,
}

impl Ctx {
    /// Records `tinyvmm run ARGS --stats-json NAME.stats.json --quiet` into NAME.kvmprof.
    /// tinyvmm's own terminal output goes to tinyvmm.log in the work directory.
    pub(super) fn profile(&self, name: &str, args: &[String]) -> Result<Run> {
        let rec_path = self.out.join(format!("{name}.kvmprof"));
        let stats_path = self.out.join(format!("{name}.stats.json"));
        let _ = std::fs::remove_file(&stats_path);
        let mut command = vec![self.tinyvmm.display().to_string(), "run".into()];
        command.extend(args.iter().cloned());
        command.extend(["--quiet".into(), "--stats-json".into(), stats_path.display().to_string(), "--name".into(), name.into()]);
        let cpu0 = children_cpu_ns();
        let quiet = Redirect::to(&self.log)?;
        let recorded = record::run(&RecordOptions {
            output: rec_path.clone(),
            guest_memory_map: None,
            pid: None,
            duration: Some(Duration::from_secs(120)),
            records: false,
            records_buffer: None,
            source: None,
            command,
            quiet: true,
            max_gap_ns: None,
            stacks: None,
        });
        drop(quiet);
        let rec = recorded.with_context(|| format!("recording the {name} run"))?;
        let cpu_ns = children_cpu_ns().saturating_sub(cpu0);
        let stats: RunStats = std::fs::read(&stats_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .with_context(|| format!("tinyvmm wrote no statistics for the {name} run: see {}", self.log.display()))?;
        match rec.meta.command_status {
            Some(0) => {}
            s => bail!(
                "the {name} run of tinyvmm failed (exit status {}, outcome {}): see {}",
                s.map_or("unknown".into(), |s| s.to_string()),
                stats.outcome_detail,
                self.log.display()
            ),
        }
        if rec.exits.is_empty() {
            bail!("the {name} run recorded no exits: is the eBPF exit source working? try `kvmprof check`");
        }
        Ok(Run { rec, stats, cpu_ns })
    }
}

pub(super) fn files_identical(a: &Path, b: &Path) -> Result<bool> {
    let x = std::fs::read(a).with_context(|| format!("cannot read {}", a.display()))?;
    let y = std::fs::read(b).with_context(|| format!("cannot read {}", b.display()))?;
    Ok(x == y)
}

pub(super) fn fresh_image(path: &Path, sectors: u64) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    // Room for the written sectors and some more; zero-filled.
    f.set_len((sectors + 64) * 512).with_context(|| format!("cannot size {}", path.display()))
}

pub(super) fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))
}

/// `100 × (after − before) / before`; `None` when there was nothing before.
pub(super) fn pct_change(before: f64, after: f64) -> Option<f64> {
    (before > 0.0).then(|| 100.0 * (after - before) / before)
}
