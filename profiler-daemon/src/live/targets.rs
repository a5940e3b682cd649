//! Which processes are VMs.
use std::fs;
use std::path::PathBuf;

use anyhow::{bail, Result};

/// Fails unless `pid` is a live process holding a KVM VM file descriptor.
pub fn check_vm_pid(pid: u32) -> Result<()> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if pid == 0 || !proc_dir.exists() {
        bail!("no process with PID {pid}");
    }
    let comm = fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
    let is_vm = is_vm(pid);
    if !is_vm {
        bail!("process {pid} ({}) is not a KVM VM: it holds no KVM VM file descriptor (anon_inode:kvm-vm)", comm.trim());
    }
    Ok(())
}

/// Whether `pid` holds a KVM VM file descriptor now.
pub fn is_vm(pid: u32) -> bool {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| fds.flatten().any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:kvm-vm")))
        .unwrap_or(false)
}

/// Whether thread `tid` of process `tgid` still exists.
pub fn thread_alive(tgid: u32, tid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{tgid}/task/{tid}")).exists()
}

/// A VM process's name for `report --by vm`: its `-name`/`--name` (QEMU's `-name guest=X,...`
/// or `-name X,...`, tinyvmm's `--name X`), else its `comm`. None once it has exited.
pub fn vm_name(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let named = args.iter().position(|a| a == "-name" || a == "--name").and_then(|i| args.get(i + 1)).map(|v| {
        let first = v.split(',').next().unwrap_or(v);
        v.split(',').find_map(|kv| kv.strip_prefix("guest=")).unwrap_or(first).to_string()
    });
    named.filter(|n| !n.is_empty()).or_else(|| fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim().to_string()))
}
