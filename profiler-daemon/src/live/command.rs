//! Starting a traced command so that its very first instruction is traced.
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};

use anyhow::{bail, Context, Result};

/// A child that waits until the programs are attached: its first instruction is already
/// traced, and it can be filtered by PID from the start. `Command::spawn` returns only after
/// `exec`, so the wait happens in a tiny `sh` that then `exec`s the command under the same PID.
pub struct GatedChild {
    pub child: Child,
    gate: Option<std::fs::File>,
}

const GATE_FD: i32 = 3;
const TRAMPOLINE: &str = "read -r _ <&3 || exit 125; exec 3<&-; exec \"$0\" \"$@\"";

impl GatedChild {
    pub fn spawn(argv: &[String]) -> Result<GatedChild> {
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

    pub fn release(&mut self) -> Result<()> {
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

