//! Helpers shared by the daemon's integration tests.
#![allow(dead_code)]
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Output, Stdio};

pub const KVMPROF: &str = env!("CARGO_BIN_EXE_kvmprof");
/// The calibration guest's binary (package kvm-exit-loop), built beside kvmprof by the README's
/// test command (`cargo build --release --workspace --bins`).
pub fn exit_loop() -> String {
    target_bin("kvm-exit-loop").display().to_string()
}

/// Live tests need root, /dev/kvm, BPF and tracefs. They fail, never skip, without them: a
/// green run that skipped them would hide a broken build.
pub fn require_live() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "live tests must run as root (eBPF, tracefs): run `sudo scripts/test`");
    assert!(Path::new("/dev/kvm").exists(), "/dev/kvm is missing: live tests need KVM");
    profiler_daemon::live::tracefs::ensure_mounted().expect("tracefs with KVM tracepoints is required");
}

pub fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap_or_else(|e| panic!("cannot run {bin}: {e}"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the bad-input contract: non-zero exit, exactly one line on stderr that contains
/// `needle`, and no panic.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].contains(needle), "error line {:?} does not mention {needle:?}", lines[0]);
}

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `kvmprof report FILE ARGS... --format json`, parsed.
pub fn report_json(file: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["report", path_str(file), "--format", "json"];
    a.extend_from_slice(args);
    let o = run(KVMPROF, &a);
    assert!(o.status.success(), "report failed: {}", stderr(&o));
    json(&stdout(&o))
}

pub fn rows(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v["rows"].as_array().expect("rows")
}

pub fn row_at<'a>(v: &'a serde_json::Value, key: &str, value: &str) -> &'a serde_json::Value {
    rows(v).iter().find(|r| r[key] == value).unwrap_or_else(|| panic!("no row with {key} = {value} in {v:#}"))
}

/// The directory holding the workspace's release binaries (for other packages' binaries).
pub fn target_bin(name: &str) -> PathBuf {
    let p = Path::new(KVMPROF).with_file_name(name);
    assert!(p.exists(), "{} not built: run `cargo build --release --workspace` first", p.display());
    p
}

/// A recording made from JSON exit rows in the documented file format, loaded (and so
/// validated) the way `kvmprof` loads a file.
pub fn synthetic_recording(exits: Vec<serde_json::Value>, threads: serde_json::Value, pid: u32) -> profiler_daemon::model::Profile {
    let v = serde_json::json!({
        "format": "kvmprof-recording", "version": 2,
        "meta": { "source": "emulated", "origin": "live", "tool_version": "0", "kernel": "k", "host": "h",
                  "start_unix_ns": 0, "end_unix_ns": 1, "pid": pid, "command": null, "command_status": 0,
                  "records_requested": false, "records_dropped": 0, "exit_keys_full": 0, "threads_full": 0,
                  "unfinished_exits": 0 },
        "threads": threads, "exits": exits, "records": null,
    });
    profiler_daemon::model::recording::from_bytes(v.to_string().as_bytes(), "synthetic").expect("valid recording")
}

/// The reason name an `out`/`in` exit gets on the exit source this host uses: the kernel's own
/// names (`IO_INSTRUCTION` on VMX, `io` on SVM, `IO` = KVM_EXIT_IO on the emulated source).
pub fn io_reason() -> &'static str {
    use profiler_daemon::model::Source;
    match profiler_daemon::live::detect_source() {
        Source::Emulated => "IO",
        Source::Hw if std::path::Path::new("/sys/module/kvm_amd").exists() => "io",
        Source::Hw => "IO_INSTRUCTION",
    }
}

/// The reason name of a `hlt` exit on this host's source (`HLT` on VMX and emulated, `hlt` on SVM).
pub fn hlt_reason() -> &'static str {
    if std::path::Path::new("/sys/module/kvm_amd").exists() {
        "hlt"
    } else {
        "HLT"
    }
}

/// Whether the tracepoints name the vCPU on this host's source (`kvm_exit`'s vcpu_id on `hw`).
pub fn source_names_vcpu() -> bool {
    profiler_daemon::live::detect_source() == profiler_daemon::model::Source::Hw
}

/// Starts `cmd` (a `kvm-exit-loop ... --wait-for-go`, maybe behind a wrapper such as `taskset`)
/// with piped stdin and stdout and waits for its `ready`: the VM exists, its guest has not run.
/// Write a line to the child's stdin to start it; its stdout is returned for its later lines.
pub fn spawn_ready(mut cmd: Command) -> (Child, BufReader<ChildStdout>) {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("kvm-exit-loop");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "kvm-exit-loop said {line:?}");
    (child, out)
}

/// `kvm-exit-loop ARGS --wait-for-go`, once it said `ready` (see [`spawn_ready`]).
pub fn exit_loop_ready(args: &[&str]) -> (Child, BufReader<ChildStdout>) {
    let mut cmd = Command::new(exit_loop());
    cmd.args(args).arg("--wait-for-go");
    spawn_ready(cmd)
}

/// Starts `kvmprof ARGS` and waits for its "recording ..." line (the programs are attached).
/// Its stderr is returned for the rest (see [`rest`]).
pub fn start_record(args: &[&str]) -> (Child, BufReader<ChildStderr>) {
    let mut c = Command::new(KVMPROF).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(c.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("kvmprof: recording "), "{line}");
    (c, err)
}

/// What is left to read of a child's stderr.
pub fn rest(mut r: BufReader<ChildStderr>) -> String {
    let mut s = String::new();
    let _ = std::io::Read::read_to_string(&mut r, &mut s);
    s
}
