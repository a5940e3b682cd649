//! `kvmprof serve` under bad or hostile conditions: each gives one clear line and no crash.
mod common;
#[path = "serve_support.rs"]
mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use support::*;

#[test]
fn a_port_in_use_is_one_line() {
    require_live();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let o = run(KVMPROF, &["serve", "--listen", &addr]);
    assert_one_line_error(&o, &format!("cannot listen on {addr}"));
    assert!(stderr(&o).contains("in use"), "{}", stderr(&o));
}

#[test]
fn a_malformed_config_is_one_line_naming_the_file_and_line() {
    require_live();
    let dir = tmpdir();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "interval_seconds = 1\ntop_functions = \"many\"\n").unwrap();
    let o = run(KVMPROF, &["serve", "--config", path_str(&cfg)]);
    assert_one_line_error(&o, &format!("config {}: line 2", cfg.display()));
    std::fs::write(&cfg, "[[vm]]\nname = \"x\"\nvmlinx = \"/typo\"\n").unwrap();
    assert_one_line_error(&run(KVMPROF, &["serve", "--config", path_str(&cfg)]), "vmlinx");
    let o = run(KVMPROF, &["serve", "--config", "/nonexistent/kvmprof.toml"]);
    assert_one_line_error(&o, "cannot read config /nonexistent/kvmprof.toml");
}

#[test]
fn not_root_is_one_line() {
    require_live();
    // setpriv (util-linux) drops to nobody for this one command.
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", KVMPROF, "serve", "--listen", &free_addr().to_string()])
        .output()
        .expect("setpriv");
    assert_one_line_error(&o, "needs root");
}

/// Program ids of the eBPF programs a process holds (from its fds' fdinfo).
fn prog_ids(pid: u32) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap().flatten() {
        let text = std::fs::read_to_string(fd.path()).unwrap_or_default();
        ids.extend(text.lines().filter_map(|l| l.strip_prefix("prog_id:")).filter_map(|v| v.trim().parse::<u64>().ok()));
    }
    ids
}

/// Every program id `bpftool prog show` lists.
fn loaded_prog_ids() -> BTreeSet<u64> {
    let o = run("bpftool", &["prog", "show", "--json"]);
    assert!(o.status.success(), "bpftool: {}", stderr(&o));
    json(&stdout(&o)).as_array().expect("array").iter().filter_map(|p| p["id"].as_u64()).collect()
}

#[test]
fn sigterm_and_sigint_stop_cleanly_and_detach_every_program() {
    require_live();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut serve = Serve::start(&[]);
        let m = serve.metrics();
        let attached = sum(&select(&m, "kvmprof_programs_attached", &[])) as usize;
        assert!(attached >= 4, "programs attached: {attached}");
        let ours = prog_ids(serve.pid());
        assert!(ours.len() >= attached, "the daemon holds {ours:?}");
        assert!(ours.is_subset(&loaded_prog_ids()), "bpftool lists the daemon's programs");
        let status = serve.stop_with(sig);
        assert!(status.success(), "signal {sig}: exit {status}; log: {}", serve.log_text());
        let log = serve.log_text();
        assert!(log.contains("stopped: detached"), "{log}");
        assert!(!log.contains("panicked"), "{log}");
        // The kernel frees a program once its last reference (fd, link) is gone, after an
        // RCU grace period: give it a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left: BTreeSet<u64> = ours.intersection(&loaded_prog_ids()).copied().collect();
            if left.is_empty() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "programs still loaded 5 s after signal {sig}: {left:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn sighup_with_a_malformed_config_keeps_the_old_one_and_a_good_one_applies() {
    require_live();
    let dir = tmpdir();
    let tinyvmm = target_bin("tinyvmm");
    let elf = dir.path().join("guest.elf");
    assert!(run(path_str(&tinyvmm), &["guest-elf", "-o", path_str(&elf)]).status.success());
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let prefix = format!("hup-{}", std::process::id());
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, format!("[[vm]]\nname = \"{prefix}-*\"\nvmlinux = \"{}\"\n", elf.display())).unwrap();
    let serve = Serve::start(&["--config", path_str(&cfg), "--interval", "0.5"]);

    std::fs::write(&cfg, "[[vm]\nname = \n").unwrap();
    serve.signal(libc::SIGHUP);
    serve.wait_for(Duration::from_secs(10), "the failed reload", |m| sum(&select(m, "kvmprof_config_last_reload_successful", &[])) == 0.0);
    let log = serve.log_text();
    let line = log.lines().find(|l| l.contains("SIGHUP:")).unwrap_or_else(|| panic!("no SIGHUP line: {log}"));
    assert!(line.contains(&format!("config {}", cfg.display())) && line.contains("keeping the previous configuration"), "{line}");

    // The old config still names this VM's functions.
    let vm1 = format!("{prefix}-1");
    let symbols_of = |vm: &str, want: &str| {
        let mut child = ChildGuard(start_tinyvmm(&tinyvmm, vm, &["--workload", "disk-write", "--count", "40", "--disk", path_str(&disk)]));
        let m = serve.wait_for(Duration::from_secs(20), &format!("{vm}'s series"), |m| !select(m, "kvmprof_vm_info", &[("vm", vm)]).is_empty());
        assert!(child.0.wait().unwrap().success());
        let info = select(&m, "kvmprof_vm_info", &[("vm", vm)]);
        assert_eq!(info[0].labels["symbols"], want, "{vm}: {info:?}");
        m
    };
    let m = symbols_of(&vm1, "ok");
    let m = if select(&m, "kvmprof_function_exits_total", &[("vm", &vm1)]).is_empty() {
        serve.wait_for(Duration::from_secs(5), "function series", |m| !select(m, "kvmprof_function_exits_total", &[("vm", &vm1)]).is_empty())
    } else {
        m
    };
    assert!(!select(&m, "kvmprof_function_exits_total", &[("vm", &vm1)]).is_empty());

    // A good config without that [[vm]] applies: the next VM has no symbols.
    std::fs::write(&cfg, "top_functions = 5\n").unwrap();
    serve.signal(libc::SIGHUP);
    serve.wait_for(Duration::from_secs(10), "the good reload", |m| sum(&select(m, "kvmprof_config_last_reload_successful", &[])) == 1.0);
    symbols_of(&format!("{prefix}-2"), "none");
    assert!(serve.log_text().contains(&format!("SIGHUP: reloaded {}", cfg.display())));
}

#[test]
fn a_missing_vmlinux_serves_the_vm_without_function_labels_and_says_why() {
    require_live();
    let dir = tmpdir();
    let tinyvmm = target_bin("tinyvmm");
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    let prefix = format!("nosym-{}", std::process::id());
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, format!("[[vm]]\nname = \"{prefix}-*\"\nvmlinux = \"/nonexistent/vmlinux-{prefix}\"\n")).unwrap();
    let serve = Serve::start(&["--config", path_str(&cfg), "--interval", "0.5"]);
    let vm = format!("{prefix}-1");
    let mut child = ChildGuard(start_tinyvmm(&tinyvmm, &vm, &["--workload", "disk-write", "--count", "40", "--disk", path_str(&disk)]));
    // Discovered by its KVM fd, it may show before its first exit: wait for exits.
    let m = serve.wait_for(Duration::from_secs(20), "the VM's exits", |m| sum(&select(m, "kvmprof_exits_total", &[("vm", &vm)])) > 0.0);
    assert!(child.0.wait().unwrap().success());
    assert_eq!(select(&m, "kvmprof_vm_info", &[("vm", &vm)])[0].labels["symbols"], "error");
    assert!(select(&m, "kvmprof_function_exits_total", &[("vm", &vm)]).is_empty());
    let log = serve.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&vm)).collect();
    assert_eq!(lines.len(), 1, "one line about the VM: {log}");
    assert!(lines[0].contains("without function labels") && lines[0].contains(&format!("/nonexistent/vmlinux-{prefix}")), "{}", lines[0]);
    assert!(serve.metrics().iter().any(|s| s.name == "kvmprof_vms"), "still serving");
}

#[test]
fn a_full_exit_map_moves_the_counters_and_the_daemon_stays_up() {
    require_live();
    // A 1 s poll: the VM lives ~0.1 s and its last values are up for one poll.
    let serve = Serve::start(&["--interval", "1"]);
    // 9000 distinct exit sites: more keys than the exit map holds (8192).
    let mut child = Command::new(exit_loop()).args(["--port-sweep", "--outs", "9000", "--out-port", "0x1000"]).stdout(std::process::Stdio::null()).spawn().unwrap();
    let pid = child.id().to_string();
    assert!(child.wait().unwrap().success());
    let m = serve.wait_for(Duration::from_secs(20), &format!("the sweep's exits (pid {pid})"), |m| {
        let vm = select(m, "kvmprof_vm_info", &[("pid", &pid)]);
        !vm.is_empty() && sum(&select(m, "kvmprof_pio_exits_total", &[("vm", &vm[0].labels["vm"])])) >= 9000.0
    });
    let vm = select(&m, "kvmprof_vm_info", &[("pid", &pid)])[0].labels["vm"].clone();
    assert_eq!(sum(&select(&m, "kvmprof_pio_exits_total", &[("vm", &vm), ("direction", "out")])), 9000.0, "every out counted");
    let full = sum(&select(&m, "kvmprof_map_full_total", &[("map", "exits")]));
    assert!(full >= 9000.0 - 8192.0, "kvmprof_map_full_total{{map=\"exits\"}} = {full}");
    // Still serving after the VM's keys are deleted; the counter does not go back.
    let m = serve.wait_for(Duration::from_secs(10), "the VM's removal", |m| select(m, "kvmprof_vm_info", &[("pid", &pid)]).is_empty());
    assert!(sum(&select(&m, "kvmprof_map_full_total", &[("map", "exits")])) >= full);
}
