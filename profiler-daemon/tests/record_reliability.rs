//! Crash safety and the ends of a target: `kvmprof record` killed with SIGKILL leaves its last
//! checkpoint, readable and marked partial; SIGTERM still writes the final file; the traced
//! VMM killed or crashing mid-recording; a full output directory; two `record`s and a
//! `serve` on one VM at once. Live: needs root, KVM, BPF, tracefs (fails without them). Not
//! root and an unmountable tracefs are in live_record.rs; a vCPU thread that ends (marked
//! `ended`, its exits kept) in session.rs.
mod common;
#[path = "serve_support.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kvm_exit_loop::ExitLoopGuest;
use profiler_daemon::model::{recording, Profile};

const N: u32 = 3000;
const M: u32 = 1500;

fn at(p: &Profile, rip: u64) -> u64 {
    p.exits.iter().filter(|e| e.rip == rip).map(|e| e.stats.count).sum()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory preconditions; the PID is a child this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill({pid}, {sig})");
}

/// `kvmprof record -o OUT -- kvm-exit-loop --outs N --pause-then-outs M`, with the guest's
/// pause protocol on kvmprof's stdin/stdout (the command inherits them).
struct Paused {
    record: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: BufReader<ChildStderr>,
    guest: ExitLoopGuest,
}

impl Paused {
    fn start(out: &Path) -> Paused {
        let mut record = Command::new(KVMPROF)
            .args(["record", "-o", path_str(out), "--", &exit_loop(), "--outs", &N.to_string(), "--pause-then-outs", &M.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = record.stdin.take().unwrap();
        let mut stdout = BufReader::new(record.stdout.take().unwrap());
        let stderr = BufReader::new(record.stderr.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "paused", "kvm-exit-loop said {line:?}");
        Paused { record, stdin, stdout, stderr, guest: ExitLoopGuest::paused(N, M, 0x80) }
    }

    /// The guest (kvmprof's child): kvm-exit-loop.
    fn guest_pid(&self) -> u32 {
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.record.id())).unwrap();
        kids.split_whitespace().next().expect("kvmprof has a child").parse().unwrap()
    }
}

/// Waits until `out` holds a checkpoint taken at least `after_ns` (unix ns); returns it.
fn checkpoint_after(out: &Path, after_ns: u64) -> Profile {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(p) = recording::load(out) {
            if p.meta.end_unix_ns >= after_ns {
                return p;
            }
        }
        assert!(Instant::now() < deadline, "no checkpoint of {} after {after_ns}", out.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn sigkill_leaves_a_readable_partial_recording_of_everything_up_to_the_last_checkpoint() {
    require_live();
    let dir = tmpdir();
    let out = dir.path().join("killed.kvmprof");
    let mut p = Paused::start(&out);
    // The guest has made exactly N outs and sits in its pause. A checkpoint taken from now on
    // holds all of them.
    let paused_at = unix_ns();
    let cp = checkpoint_after(&out, paused_at);
    assert!(cp.meta.partial, "a checkpoint is marked partial");
    assert_eq!(at(&cp, p.guest.out_rip), N as u64, "the checkpoint during the pause: {:?}", cp.exits);
    let guest_pid = p.guest_pid();
    signal(p.record.id(), libc::SIGKILL);
    let status = p.record.wait().unwrap();
    assert_eq!(status.code(), None, "killed by a signal");
    // The guest lives on (kvmprof does not take the VM down); let it finish: N + M outs.
    writeln!(p.stdin, "go").unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut p.stdout, &mut rest);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{guest_pid}")).exists() {
        assert!(Instant::now() < deadline, "the guest did not finish after kvmprof died");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = json(rest.lines().last().unwrap_or(""));
    assert_eq!(stats["stats"]["outs"], (N + M) as u64, "the guest ran to its end: {rest}");

    // What is left: the last checkpoint, whole (the rename never leaves half a file), marked
    // partial, with counts between what the guest had done at the checkpoint and its total.
    let left = recording::load(&out).expect("the file left by a SIGKILLed record reads");
    assert!(left.meta.partial);
    let outs = at(&left, p.guest.out_rip);
    assert!(outs >= N as u64 && outs <= (N + M) as u64, "{outs} outs, the guest made {N} by the checkpoint and {} in all", N + M);
    assert_eq!(outs, N as u64, "kvmprof died during the pause: nothing after it");
    assert!(left.meta.end_unix_ns >= paused_at && left.meta.end_unix_ns > left.meta.start_unix_ns);
    assert!(!dir.path().join("killed.kvmprof-tmp").exists(), "no temporary file is left: it is renamed or never made");
    // `report` reads it, says it is partial and when it ended, and exits 0.
    let o = run(KVMPROF, &["report", path_str(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let notes: Vec<String> = stdout(&o).lines().filter(|l| l.starts_with("note: partial recording")).map(String::from).collect();
    assert_eq!(notes.len(), 1, "{}", stdout(&o));
    let end = profiler_daemon::render::utc(left.meta.end_unix_ns);
    assert!(notes[0].contains("last checkpoint") && notes[0].ends_with(&format!("ending at {end} (exits after that are not in it)")), "{}", notes[0]);
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut p.stderr, &mut err);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn sigterm_during_a_recording_still_writes_the_final_file() {
    require_live();
    let dir = tmpdir();
    let out = dir.path().join("term.kvmprof");
    let mut p = Paused::start(&out);
    checkpoint_after(&out, unix_ns());
    let guest_pid = p.guest_pid();
    signal(p.record.id(), libc::SIGTERM);
    let status = p.record.wait().unwrap();
    // The guest is still paused: release it, then check the file kvmprof wrote on SIGTERM.
    writeln!(p.stdin, "go").unwrap();
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut p.stderr, &mut err);
    assert_eq!(status.code(), Some(0), "{err}");
    let summary: Vec<&str> = err.lines().filter(|l| l.contains(" exits at ") && l.ends_with(path_str(&out))).collect();
    assert_eq!(summary.len(), 1, "{err}");
    let fin = recording::load(&out).unwrap();
    assert!(!fin.meta.partial, "the final file is not a checkpoint");
    assert_eq!(at(&fin, p.guest.out_rip), N as u64);
    assert_eq!(at(&fin, p.guest.pause_rip), 1, "the pause, still open at SIGTERM, charged as unfinished");
    assert_eq!(fin.meta.unfinished_exits, 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{guest_pid}")).exists() {
        assert!(Instant::now() < deadline, "the guest did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A VM that keeps exiting until it is killed: kvm-exit-loop with a huge out count, paced.
fn long_vm() -> Child {
    let child = Command::new(exit_loop()).args(["--outs", "100000000", "--outs-per-second", "2000"]).stdout(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while profiler_daemon::live::targets::check_vm_pid(child.id()).is_err() {
        assert!(Instant::now() < deadline, "the guest never created its VM");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn the_followed_vmm_killed_mid_recording_ends_the_recording_with_one_line() {
    require_live();
    let dir = tmpdir();
    let out = dir.path().join("pid.kvmprof");
    let mut vm = long_vm();
    let pid = vm.id();
    let (mut rec, err) = start_record(&["record", "-o", path_str(&out), "--pid", &pid.to_string()]);
    std::thread::sleep(Duration::from_millis(1500));
    vm.kill().unwrap();
    vm.wait().unwrap();
    let status = rec.wait().unwrap();
    let err = rest(err);
    assert_eq!(status.code(), Some(0), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("exited")).collect();
    assert_eq!(lines, [format!("kvmprof: PID {pid} exited: recording stopped").as_str()], "{err}");
    let fin = recording::load(&out).unwrap();
    assert!(!fin.meta.partial);
    assert!(fin.total_exits() > 1000, "{} exits in 1.5 s at 2000/s", fin.total_exits());
}

#[test]
fn the_recorded_command_crashing_is_said_in_one_line_and_the_recording_is_kept() {
    require_live();
    let dir = tmpdir();
    let out = dir.path().join("crash.kvmprof");
    // The VMM dies of SIGABRT mid-run (an abort: a failed assertion, a panic=abort): the shell arms an ABRT for its own PID, then becomes
    // the VMM (exec keeps the PID, so the traced process is the VMM).
    let script = format!("(sleep 1.5; kill -ABRT $$) & exec {} --outs 100000000 --outs-per-second 2000 >/dev/null", exit_loop());
    let o = run(KVMPROF, &["record", "-o", path_str(&out), "--", "sh", "-c", &script]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let notes: Vec<&str> = err.lines().filter(|l| l.starts_with("kvmprof: note: the command")).collect();
    assert_eq!(notes, ["kvmprof: note: the command exited with status 134"], "{err}");
    let fin = recording::load(&out).unwrap();
    assert_eq!(fin.meta.command_status, Some(134));
    assert!(fin.total_exits() > 1000, "{}", fin.total_exits());
}

#[test]
fn a_full_output_directory_is_one_clear_error_and_the_older_file_survives() {
    require_live();
    let dir = tmpdir();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let m = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k", "none", path_str(&mnt)]).status().unwrap();
    assert!(m.success(), "mount a 64 KiB tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(&mnt);
    let out = mnt.join("run.kvmprof");
    let older = b"an older recording the user wants to keep\n";
    std::fs::write(&out, older).unwrap();
    // Fill the rest of the file system.
    let _ = std::fs::write(mnt.join("filler"), vec![0u8; 64 * 1024]);
    // 3000 distinct exit sites with records: far more than the space left.
    let o = run(KVMPROF, &["record", "--records", "-o", path_str(&out), "--", &exit_loop(), "--port-sweep", "--outs", "3000", "--out-port", "0x1000"]);
    let err = stderr(&o);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("kvmprof: error:")).collect();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains(&format!("cannot write recording {}", out.display())) && errors[0].contains("No space left on device"), "{}", errors[0]);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), older, "the older file at that path is untouched");
    assert!(!out.with_extension("kvmprof-tmp").exists(), "the temporary file is removed");
}

#[test]
fn two_records_and_a_serve_on_one_vm_each_count_exactly() {
    require_live();
    let dir = tmpdir();
    let mut vm = Command::new(exit_loop())
        .args(["--outs", &N.to_string(), "--pause-then-outs", &M.to_string(), "--wait-for-go"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut vm_in = vm.stdin.take().unwrap();
    let mut vm_out = BufReader::new(vm.stdout.take().unwrap());
    let mut expect = |want: &str| {
        let mut line = String::new();
        vm_out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), want, "kvm-exit-loop said {line:?}");
    };
    expect("ready");
    let pid = vm.id().to_string();
    let serve = support::Serve::start(&["--interval", "0.5"]);
    let (a, b) = (dir.path().join("a.kvmprof"), dir.path().join("b.kvmprof"));
    let (mut rec_a, err_a) = start_record(&["record", "-o", path_str(&a), "--pid", &pid]);
    let (mut rec_b, err_b) = start_record(&["record", "-o", path_str(&b), "--pid", &pid]);
    let info = serve.wait_for(Duration::from_secs(20), "serve to see the VM", |m| !support::select(m, "kvmprof_vm_info", &[("pid", &pid)]).is_empty());
    let label = support::select(&info, "kvmprof_vm_info", &[("pid", &pid)])[0].labels["vm"].clone();
    writeln!(vm_in, "go").unwrap();
    expect("paused");
    // The guest sits in its pause after exactly N outs: serve shows exactly N.
    let outs = |m: &[support::Sample]| support::sum(&support::select(m, "kvmprof_pio_exits_total", &[("vm", &label), ("port", "0x80"), ("direction", "out")]));
    let m = serve.wait_for(Duration::from_secs(20), "serve to show the N outs", |m| outs(m) >= N as f64);
    assert_eq!(outs(&m), N as f64, "serve, during the pause");
    writeln!(vm_in, "go").unwrap();
    assert!(vm.wait().unwrap().success());
    let guest = ExitLoopGuest::paused(N, M, 0x80);
    for (rec, err, out) in [(&mut rec_a, err_a, &a), (&mut rec_b, err_b, &b)] {
        let status = rec.wait().unwrap();
        let err = rest(err);
        assert_eq!(status.code(), Some(0), "{err}");
        assert!(err.lines().any(|l| l == format!("kvmprof: PID {pid} exited: recording stopped")), "{err}");
        let p = recording::load(out).unwrap();
        assert_eq!((at(&p, guest.out_rip), at(&p, guest.pause_rip), at(&p, guest.hlt_rip)), ((N + M) as u64, 2, 1), "{}: {:?}", out.display(), p.exits);
        assert_eq!(p.total_exits(), (N + M + 3) as u64, "{}", out.display());
    }
    assert!(serve.log_text().lines().all(|l| !l.contains("error")), "{}", serve.log_text());
}
