//! The traced command's output while the terminal view owns the screen: a VMM that prints its
//! guest console would scribble over the view, and one that reads the terminal would steal
//! its keys. So the command gets /dev/null as stdin and a log file as stdout and stderr, and
//! the end of that log is shown after the view closes if the command failed.
//!
//! `GatedChild::spawn` inherits kvmprof's own descriptors 0-2, so they are pointed elsewhere
//! for the duration of the spawn (kvmprof is single-threaded then and writes nothing).
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

pub struct CommandLog {
    file: File,
    path: PathBuf,
}

impl CommandLog {
    pub fn create() -> Result<CommandLog> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!("kvmprof-top-{}-{nanos}.log", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {} for the command's output", path.display()))?;
        Ok(CommandLog { file, path })
    }

    /// Runs `spawn` with descriptors 0, 1, 2 on /dev/null, the log and the log, then puts
    /// them back: a child spawned inside inherits the log instead of the terminal.
    pub fn redirect_while<T>(&self, spawn: impl FnOnce() -> T) -> Result<T> {
        let null = File::open("/dev/null").context("cannot open /dev/null")?;
        let _restore = Saved::swap(&[null.as_raw_fd(), self.file.as_raw_fd(), self.file.as_raw_fd()])?;
        Ok(spawn())
    }

    /// The last `n` lines the command wrote.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect()
    }
}

impl Drop for CommandLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Copies of descriptors 0-2, put back on drop (also if the spawn panics).
struct Saved([i32; 3]);

impl Saved {
    /// Saves 0-2, then makes descriptor i a copy of `with[i]`.
    fn swap(with: &[i32; 3]) -> Result<Saved> {
        let mut saved = [-1; 3];
        for (fd, slot) in saved.iter_mut().enumerate() {
            // SAFETY: F_DUPFD_CLOEXEC on a descriptor we do not close; the copy is ours.
            *slot = unsafe { libc::fcntl(fd as i32, libc::F_DUPFD_CLOEXEC, 3) };
            if *slot < 0 {
                let e = std::io::Error::last_os_error();
                drop(Saved(saved));
                bail!("cannot save descriptor {fd}: {e}");
            }
        }
        let saved = Saved(saved);
        for (fd, src) in with.iter().enumerate() {
            // SAFETY: both descriptors are open; dup2 atomically replaces `fd`.
            if unsafe { libc::dup2(*src, fd as i32) } < 0 {
                bail!("cannot redirect descriptor {fd}: {}", std::io::Error::last_os_error());
            }
        }
        Ok(saved)
    }
}

impl Drop for Saved {
    fn drop(&mut self) {
        for (fd, copy) in self.0.iter().enumerate() {
            if *copy >= 0 {
                // SAFETY: `copy` is our own descriptor from F_DUPFD_CLOEXEC; it is put back on
                // `fd` and then closed, once.
                unsafe {
                    libc::dup2(*copy, fd as i32);
                    libc::close(*copy);
                }
            }
        }
    }
}
