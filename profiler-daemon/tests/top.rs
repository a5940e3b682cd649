//! `kvmprof top` live: the terminal view driven through tmux on tinyvmm's disk workload, the
//! batch tables on a guest with a known exit rate, and bad input. Needs root, KVM, BPF, tracefs
//! and tmux: fails without them.
mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// One test at a time: each watches the eBPF programs of its own kvmprof.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `f` every 100 ms until it returns `Some`, or panics with `what` and the last state.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(state) if Instant::now() >= deadline => panic!("timed out waiting for {what}; last state:\n{state}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The direct children of a process.
fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes: it runs nothing and holds no descriptors.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

/// The eBPF programs a process holds (program and link descriptors both name them).
fn programs_of(pid: u32) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).into_iter().flatten().flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        ids.extend(info.lines().filter_map(|l| l.strip_prefix("prog_id:")).filter_map(|v| v.trim().parse::<u64>().ok()));
    }
    ids
}

/// Every loaded eBPF program, id -> name, as bpftool lists them.
fn loaded_programs() -> Vec<(u64, String)> {
    let o = run("bpftool", &["-j", "prog", "show"]);
    assert!(o.status.success(), "bpftool: {}", stderr(&o));
    let v = json(&stdout(&o));
    v.as_array().expect("bpftool lists programs").iter().map(|p| (p["id"].as_u64().unwrap(), p["name"].as_str().unwrap_or("").to_string())).collect()
}

/// A tmux server of this test's own (its own socket, no user config), killed on drop with
/// every process in its pane (kvmprof, tinyvmm), also when an assertion fails.
struct Tmux {
    socket: String,
    /// Processes seen in the pane earlier, in case they have left it (reparented) by then.
    seen: Vec<u32>,
}

/// `pid` and all its descendants.
fn descendants(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        all.extend(children(all[i]));
        i += 1;
    }
    all
}

impl Tmux {
    fn start(width: u16, height: u16, shell_command: &str) -> Tmux {
        let socket = format!("kvmprof-top-test-{}", std::process::id());
        let t = Tmux { socket, seen: Vec::new() };
        let (w, h) = (width.to_string(), height.to_string());
        t.cmd(&["new-session", "-d", "-s", "top", "-x", &w, "-y", &h, shell_command]);
        t
    }

    fn cmd(&self, args: &[&str]) -> String {
        let o = Command::new("tmux").args(["-f", "/dev/null", "-L", &self.socket]).args(args).output().expect("tmux is required: apt install tmux");
        assert!(o.status.success(), "tmux {args:?}: {}", stderr(&o));
        stdout(&o)
    }

    fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", "top"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        self.cmd(&args);
    }

    /// The pane's shell.
    fn pane_pid(&self) -> u32 {
        self.cmd(&["display-message", "-p", "-t", "top", "#{pane_pid}"]).trim().parse().expect("pane pid")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let pane = Command::new("tmux").args(["-f", "/dev/null", "-L", &self.socket, "display-message", "-p", "-t", "top", "#{pane_pid}"]).output();
        let mut pids = pane.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).map(descendants).unwrap_or_default();
        pids.extend(&self.seen);
        let _ = Command::new("tmux").args(["-f", "/dev/null", "-L", &self.socket, "kill-server"]).output();
        for pid in pids.into_iter().filter(|p| alive(*p)) {
            // SAFETY: kill has no memory preconditions; the PIDs are this test's pane's processes.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// The table on a `top` screen: (column header, rows), split on runs of 2+ spaces.
fn table(screen: &str) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    let cells = |l: &str| l.trim().split("  ").map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect::<Vec<_>>();
    let mut lines = screen.lines().skip_while(|l| !l.trim_start().starts_with("Exits/s"));
    let header = cells(lines.next()?);
    let rows = lines.take_while(|l| !l.trim().is_empty()).map(cells).collect();
    Some((header, rows))
}

/// The first row's last cell (what the row is), if the table has `key` as its last column.
fn first_row_named(screen: &str, key: &str) -> Result<String, String> {
    match table(screen) {
        Some((h, rows)) if h.last().map(String::as_str) == Some(key) && !rows.is_empty() => Ok(rows[0].last().unwrap().clone()),
        _ => Err(screen.to_string()),
    }
}

#[test]
fn terminal_view_of_a_disk_workload_by_function_then_reason_then_quit() {
    require_live();
    let _serial = serial();
    let dir = tmpdir();
    let tinyvmm = target_bin("tinyvmm");
    let elf = dir.path().join("guest.elf");
    let o = run(path_str(&tinyvmm), &["guest-elf", "-o", path_str(&elf)]);
    assert!(o.status.success(), "tinyvmm guest-elf: {}", stderr(&o));
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(4 << 20).unwrap();
    let (exit_file, stty_file) = (dir.path().join("exit"), dir.path().join("stty"));
    // 3000 sectors of 271 exits each: about 10 s here, longer than the test needs; `q` stops it.
    let top = format!(
        "{KVMPROF} top --vmlinux {elf} -- {vmm} run --workload disk-write --count 3000 --disk {disk} --quiet; \
         echo EXIT=$? > {exit}; stty -a > {stty}; sleep 600",
        elf = elf.display(),
        vmm = tinyvmm.display(),
        disk = disk.display(),
        exit = exit_file.display(),
        stty = stty_file.display(),
    );
    let mut tmux = Tmux::start(160, 40, &top);

    // By function (symbols given): the IDE data port's function leads.
    let first = wait_for("a first row by function", Duration::from_secs(20), || first_row_named(&tmux.screen(), "Function"));
    assert!(first.ends_with("::ide_output_data"), "first row is {first:?}, not ide_output_data:\n{}", tmux.screen());
    let screen = tmux.screen();
    assert!(screen.contains("by function, sorted by exits/s"), "{screen}");
    assert!(screen.contains("| 1 VM |") && screen.contains("exits/s | exit time"), "header: {screen}");
    assert!(screen.lines().last().is_some_and(|l| l.contains("q quit") && l.contains("Enter")), "key help on the last line: {screen}");

    // kvmprof and its programs, and tinyvmm, to check that `q` ends them.
    let kvmprof = children(tmux.pane_pid()).into_iter().next().expect("kvmprof runs in the pane");
    let vmm = children(kvmprof).into_iter().next().expect("kvmprof started tinyvmm");
    tmux.seen.extend([kvmprof, vmm]);
    let ours = programs_of(kvmprof);
    let names: BTreeSet<String> = loaded_programs().into_iter().filter(|(id, _)| ours.contains(id)).map(|(_, n)| n).collect();
    for want in ["kvm_pio", "kvm_userspace_e", "kvm_fpu"] {
        assert!(names.contains(want), "kvmprof holds program {want}: {names:?}");
    }

    // `r`: one row per reason; a disk workload exits for port I/O.
    tmux.keys(&["r"]);
    let first = wait_for("rows by reason", Duration::from_secs(5), || first_row_named(&tmux.screen(), "Reason"));
    assert_eq!(first, io_reason(), "{}", tmux.screen());
    let (header, rows) = table(&tmux.screen()).unwrap();
    assert_eq!(header, ["Exits/s", "Time (ms/s)", "Mean (us)", "p99 (us)", "Time %", "Reason"]);
    assert!(rows.iter().all(|r| r.len() == 6), "one reason per row: {rows:?}");

    // `f`, Enter: the function's RIPs and callers (tinyvmm hands kvmprof its memory map).
    tmux.keys(&["f"]);
    wait_for("rows by function again", Duration::from_secs(5), || first_row_named(&tmux.screen(), "Function"));
    tmux.keys(&["Enter"]);
    let detail = wait_for("the function's callers", Duration::from_secs(5), || {
        let s = tmux.screen();
        let callers = s.lines().skip_while(|l| !l.ends_with("ide_output_data: its callers")).nth(2).map(str::to_string);
        callers.filter(|l| l.ends_with("::ide_do_rw_disk")).map(|_| s.clone()).ok_or(s)
    });
    assert!(detail.contains("ide_output_data: its RIPs"), "{detail}");
    tmux.keys(&["Escape"]);
    wait_for("the table again", Duration::from_secs(5), || first_row_named(&tmux.screen(), "Function"));

    // `q`: exit status 0, the terminal restored, the programs gone, tinyvmm stopped.
    tmux.keys(&["q"]);
    let status = wait_for("kvmprof to exit", Duration::from_secs(10), || std::fs::read_to_string(&exit_file).map_err(|e| e.to_string()));
    assert_eq!(status.trim(), "EXIT=0");
    let stty = wait_for("stty", Duration::from_secs(5), || std::fs::read_to_string(&stty_file).map_err(|e| e.to_string()).and_then(|s| if s.contains("icanon") { Ok(s) } else { Err(s) }));
    let flags: Vec<&str> = stty.split_whitespace().collect();
    assert!(flags.contains(&"icanon") && flags.contains(&"echo"), "terminal left in raw mode: {stty}");
    assert!(!tmux.screen().contains("Exits/s"), "the alternate screen was left: {}", tmux.screen());
    wait_for("kvmprof's programs to be unloaded", Duration::from_secs(5), || {
        let left: Vec<_> = loaded_programs().into_iter().filter(|(id, _)| ours.contains(id)).collect();
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    });
    wait_for("tinyvmm to be stopped", Duration::from_secs(5), || if alive(vmm) { Err(format!("tinyvmm {vmm} runs")) } else { Ok(()) });
}

/// One parsed batch table.
#[derive(Debug)]
struct Table {
    index: u64,
    secs: f64,
    exits_per_s: f64,
    rows: Vec<Vec<String>>,
}

/// Parses `top`'s batch output, asserting its exact structure: blocks of a summary line, the
/// column header, rows, and a blank line.
fn parse_batch(out: &str, by: &str) -> Vec<Table> {
    assert!(out.ends_with("\n\n"), "every table ends with a blank line: {out:?}");
    let mut tables = Vec::new();
    for block in out.trim_end().split("\n\n") {
        let lines: Vec<&str> = block.lines().collect();
        let fields: Vec<&str> = lines[0].split(" | ").collect();
        assert_eq!(fields.len(), 6, "summary line: {:?}", lines[0]);
        let head: Vec<&str> = fields[0].strip_prefix("kvmprof top: interval ").expect("summary line").split(", ").collect();
        assert_eq!(head.len(), 3, "{:?}", lines[0]);
        let index = head[0].parse().expect("interval number");
        let secs: f64 = head[1].strip_suffix(" s").and_then(|s| s.parse().ok()).expect("interval length");
        assert!(head[2].starts_with("t=") && head[2].ends_with(" s"), "{:?}", lines[0]);
        assert_eq!(fields[1], format!("source {}", profiler_daemon::live::detect_source().name()));
        assert_eq!(fields[2], "1 VM");
        let exits_per_s = fields[3].strip_suffix(" exits/s").and_then(|s| s.parse().ok()).expect("exits/s");
        assert!(fields[4].starts_with("exit time ") && fields[4].ends_with("% of one CPU"), "{:?}", fields[4]);
        assert_eq!(fields[5], "drops 0");
        let header: Vec<&str> = lines[1].split_whitespace().collect();
        let want = format!("Exits/s Time (ms/s) Mean (us) p99 (us) Time % {by}");
        assert_eq!(header.join(" "), want, "column header");
        let rows = lines[2..].iter().map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect()).collect();
        tables.push(Table { index, secs, exits_per_s, rows });
    }
    tables
}

#[test]
fn batch_tables_show_a_known_exit_rate_within_ten_percent() {
    require_live();
    let _serial = serial();
    const RATE: f64 = 2000.0;
    // 20011 outs at 2000/s last 10 s: top stops the guest after its 4 intervals. The odd count
    // tags this test's guest so that the check below finds it and nothing else.
    let exit_loop = exit_loop();
    let args = ["top", "--iterations", "4", "--interval", "1", "--by", "port", "--", &exit_loop, "--outs", "20011", "--outs-per-second", "2000"];
    let o = run(KVMPROF, &args);
    assert!(o.status.success(), "top failed: {}", stderr(&o));
    assert_eq!(stderr(&o), "", "nothing on stderr");
    let tables = parse_batch(&stdout(&o), "Port");
    assert_eq!(tables.iter().map(|t| t.index).collect::<Vec<_>>(), [1, 2, 3, 4], "{tables:?}");
    for t in &tables {
        assert!((0.5..2.0).contains(&t.secs), "interval length {}", t.secs);
        // Only `out`s to port 0x80 are port exits (the final hlt is not).
        assert_eq!(t.rows.len(), 1, "one port row: {t:?}");
        let r = &t.rows[0];
        assert_eq!(r.len(), 6, "{r:?}");
        assert_eq!(r[5], "out 0x80");
        assert_eq!(r[4], "100.00%");
        let rate: f64 = r[0].parse().expect("exits/s");
        assert!((rate - t.exits_per_s).abs() <= 0.5, "the row is every exit: {rate} vs {}", t.exits_per_s);
        if t.index > 1 {
            assert!((rate - RATE).abs() <= RATE / 10.0, "interval {}: {rate} exits/s, want {RATE} +-10%", t.index);
        }
    }
    // The command top started does not outlive it.
    let tagged = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|p| std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c.windows(6).any(|w| w == b"20011\0")))
    };
    wait_for("the guest to be stopped", Duration::from_secs(5), || if tagged() { Err("kvm-exit-loop --outs 20011 still runs".into()) } else { Ok(()) });
}

#[test]
fn bad_input_is_one_clear_line() {
    require_live();
    let _serial = serial();
    assert_one_line_error(&run(KVMPROF, &["top", "--pid", "999999999"]), "no process with PID 999999999");
    assert_one_line_error(&run(KVMPROF, &["top", "--pid", "1"]), "is not a KVM VM");
    assert_one_line_error(&run(KVMPROF, &["top", "--by", "function"]), "--by function needs the guest's symbols: add --vmlinux ELF or --kallsyms FILE");
    assert_one_line_error(&run(KVMPROF, &["top", "--interval", "0.01"]), "--interval must be at least 0.1 s");
    let missing = PathBuf::from("/nonexistent/guest.elf");
    assert_one_line_error(&run(KVMPROF, &["top", "--vmlinux", path_str(&missing)]), "/nonexistent/guest.elf");
    assert_one_line_error(&run(KVMPROF, &["top", "--", "/nonexistent/vmm"]), "cannot run /nonexistent/vmm");
}
