//! Which processes are VMs, what they are called, and when they are gone.
//!
//! A VM is any process holding a KVM VM file descriptor (`anon_inode:kvm-vm`), or one the
//! eBPF programs saw exit. It is named by its command line: QEMU's `-name NAME` (also
//! `-name guest=NAME,debug-threads=on`), tinyvmm's `--name NAME`, else `comm-PID`.
//! A process is identified by (PID, start time), so a recycled PID is a new VM.
use std::collections::BTreeMap;
use std::fs;

use crate::live::targets::is_vm;

/// One process, as identity: PIDs are recycled, (PID, start time) is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcId {
    pub pid: u32,
    /// Field 22 of /proc/PID/stat: clock ticks after boot.
    pub start: u64,
}

/// (start time, running) of `pid`: `None` when the process is gone; a zombie (exited, not yet
/// reaped by its parent) is not running.
pub fn proc_state(pid: u32) -> Option<(u64, bool)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces or ')': fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, !matches!(*state, "Z" | "X" | "x")))
}

/// Whether the process is still the one that was seen, and running.
pub fn alive(id: ProcId) -> bool {
    proc_state(id.pid).is_some_and(|(start, running)| start == id.start && running)
}

/// Every process that holds a KVM VM file descriptor now.
pub fn scan_vms() -> Vec<ProcId> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    let mut v = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if is_vm(pid) {
            if let Some((start, true)) = proc_state(pid) {
                v.push(ProcId { pid, start });
            }
        }
    }
    v
}

/// The VM label of a running process, from its command line (see the module doc).
pub fn label(pid: u32) -> String {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    if let Some(name) = name_from_args(&args) {
        return name;
    }
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let comm = comm.trim();
    format!("{}-{pid}", if comm.is_empty() { "vm" } else { comm })
}

/// `-name X` / `--name X` / `-name=X` / `--name=X`, X in QEMU's syntax (`guest=NAME,...` or
/// `NAME,...`; tinyvmm's plain names are the same syntax).
pub fn name_from_args(args: &[String]) -> Option<String> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let value = match a.as_str() {
            "-name" | "--name" => it.next().cloned(),
            _ => a.strip_prefix("--name=").or_else(|| a.strip_prefix("-name=")).map(str::to_string),
        };
        if let Some(v) = value {
            if let Some(n) = qemu_name(&v) {
                return Some(n);
            }
        }
    }
    None
}

fn qemu_name(v: &str) -> Option<String> {
    let parts: Vec<&str> = v.split(',').collect();
    let name = parts.iter().find_map(|p| p.strip_prefix("guest=")).or_else(|| parts.first().copied().filter(|p| !p.contains('=')))?;
    (!name.is_empty()).then(|| name.to_string())
}

/// Labels unique among the live VMs: the first VM with a name keeps it; a second one running
/// at the same time gets `NAME-PID`, so two VMs' counters never add up in one series.
#[derive(Debug, Default)]
pub struct Labels {
    by_label: BTreeMap<String, ProcId>,
}

impl Labels {
    pub fn assign(&mut self, id: ProcId, wanted: String) -> String {
        let label = if self.by_label.contains_key(&wanted) { format!("{wanted}-{}", id.pid) } else { wanted };
        self.by_label.insert(label.clone(), id);
        label
    }

    pub fn release(&mut self, label: &str) {
        self.by_label.remove(label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn names_from_command_lines() {
        assert_eq!(name_from_args(&args("qemu-system-x86_64 -enable-kvm -name guest=web1,debug-threads=on -m 1G")).as_deref(), Some("web1"));
        assert_eq!(name_from_args(&args("qemu-system-x86_64 -name web2,debug-threads=on")).as_deref(), Some("web2"));
        assert_eq!(name_from_args(&args("qemu-system-x86_64 -name debug-threads=on,guest=web3")).as_deref(), Some("web3"));
        assert_eq!(name_from_args(&args("tinyvmm run --workload timer --name t1")).as_deref(), Some("t1"));
        assert_eq!(name_from_args(&args("tinyvmm run --name=t2")).as_deref(), Some("t2"));
        assert_eq!(name_from_args(&args("qemu-system-x86_64 -name debug-threads=on")), None);
        assert_eq!(name_from_args(&args("kvm-exit-loop --outs 5")), None);
        // The program's own name is not an option.
        assert_eq!(name_from_args(&args("--name")), None);
    }

    #[test]
    fn duplicate_names_get_the_pid() {
        let mut l = Labels::default();
        let a = ProcId { pid: 10, start: 1 };
        let b = ProcId { pid: 11, start: 2 };
        assert_eq!(l.assign(a, "vm".into()), "vm");
        assert_eq!(l.assign(b, "vm".into()), "vm-11");
        l.release("vm");
        assert_eq!(l.assign(ProcId { pid: 12, start: 3 }, "vm".into()), "vm");
    }

    #[test]
    fn this_process_is_running() {
        let (start, running) = proc_state(std::process::id()).unwrap();
        assert!(running);
        assert!(alive(ProcId { pid: std::process::id(), start }));
        assert!(!alive(ProcId { pid: std::process::id(), start: start + 1 }));
    }
}
