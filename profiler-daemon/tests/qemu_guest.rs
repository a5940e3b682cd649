//! The bundled guest on QEMU's device models (PVH boot, workload on the kernel command line,
//! QEMU's PIIX IDE, PM timer and 16550, `isa-debug-exit`), recorded by `--pid` with the guest
//! memory map found automatically; and `report --by vm` over several VMs. Needs root, KVM,
//! BPF, tracefs and `qemu-system-x86_64` (`scripts/setup.sh`): fails, never skips, without
//! them.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::*;
use profiler_daemon::model::{recording, GuestMemoryOrigin};

const QEMU: &str = "qemu-system-x86_64";
/// Sectors the guest writes: small, every guest instruction is emulated here.
const SECTORS: u64 = 20;
/// Disk size: both VMMs get the same zeroed 1 MiB image.
const DISK_BYTES: u64 = 1 << 20;
/// SeaBIOS boots in ~6 s on an idle machine; a loaded 2-core CI box is much slower.
const BOOT_LIMIT: Duration = Duration::from_secs(240);

fn require_qemu() {
    require_live();
    let found = std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(QEMU).is_file()));
    assert!(found, "{QEMU} is not installed: run `scripts/setup.sh` (it installs qemu-system-x86)");
}

/// `<target>/release/tinyvmm`, next to the test executable's `deps/` directory.
fn tinyvmm() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(Path::parent).unwrap().join("tinyvmm");
    assert!(p.exists(), "{} is missing: build it with `cargo build --release -p vmm`", p.display());
    p
}

fn guest_elf(dir: &Path) -> PathBuf {
    let elf = dir.join("guest.elf");
    let o = run(path_str(&tinyvmm()), &["guest-elf", "-o", path_str(&elf)]);
    assert!(o.status.success(), "tinyvmm guest-elf: {}", stderr(&o));
    elf
}

fn zeroed_disk(path: &Path) {
    std::fs::File::create(path).unwrap().set_len(DISK_BYTES).unwrap();
}

/// Lines of a child's pipe, read on a thread of their own.
fn lines_of(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns every line seen up to it.
fn wait_for(rx: &Receiver<String>, needle: &str, limit: Duration, what: &str) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = l.contains(needle);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
            Err(_) => panic!("{what}: no line with {needle:?} within {limit:?}; saw {seen:#?}"),
        }
    }
}

/// A QEMU running the bundled guest, its console on stdin/stdout.
struct Qemu {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Receiver<String>,
}

impl Qemu {
    /// `-kernel ELF -append CMDLINE`, the disk on QEMU's PIIX IDE primary master, exit through
    /// `isa-debug-exit` at 0xf4 (the guest's default exit port under PVH).
    fn start(kernel: &Path, disk: &Path, cmdline: &str) -> Qemu {
        Qemu::start_with(kernel, disk, cmdline, &[])
    }

    fn start_with(kernel: &Path, disk: &Path, cmdline: &str, extra: &[&str]) -> Qemu {
        let mut child = Command::new(QEMU)
            .args(["-name", "kvmprof-qemu-guest,debug-threads=on", "-enable-kvm", "-machine", "pc", "-m", "64", "-no-reboot"])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
            .arg("-kernel")
            .arg(kernel)
            .args(["-append", cmdline])
            .arg("-drive")
            .arg(format!("file={},if=ide,format=raw", disk.display()))
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {QEMU}: {e}"));
        let console = lines_of(child.stdout.take().unwrap());
        Qemu { stdin: child.stdin.take(), child, console }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The guest's `wait=serial`: one byte on COM1 starts the workload.
    fn go(&mut self) {
        let s = self.stdin.as_mut().unwrap();
        s.write_all(b"g").unwrap();
        s.flush().unwrap();
    }

    fn wait(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "QEMU still runs after {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kvmprof record --pid PID -o FILE ARGS`, started; returns once it says it is recording.
fn start_record(pid: u32, out: &Path, extra: &[&str]) -> (Child, Receiver<String>) {
    let mut child = Command::new(KVMPROF)
        .args(["record", "-o", path_str(out), "--pid", &pid.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run kvmprof");
    let err = lines_of(child.stderr.take().unwrap());
    wait_for(&err, "kvmprof: recording", Duration::from_secs(60), "kvmprof record");
    (child, err)
}

fn finish_record(mut child: Child, err: Receiver<String>) -> Vec<String> {
    let status = child.wait().unwrap();
    let lines: Vec<String> = err.iter().collect();
    assert!(status.success(), "record failed: {lines:#?}");
    lines
}

fn result_json(lines: &[String]) -> serde_json::Value {
    let l = lines.iter().rev().find_map(|l| l.strip_prefix("@@result ")).unwrap_or_else(|| panic!("no @@result line in {lines:#?}"));
    json(l)
}

#[test]
fn bundled_guest_on_qemu_is_profiled_by_pid_with_callers_and_writes_tinyvmm_s_image() {
    require_qemu();
    let dir = tmpdir();
    let elf = guest_elf(dir.path());
    let qemu_disk = dir.path().join("qemu.img");
    zeroed_disk(&qemu_disk);
    // batch-pio asks for tinyvmm's doorbell: the guest must find it absent and say so.
    let cmdline = format!("workload=disk-write count={SECTORS} skip-pmtmr-calibration batch-pio wait=serial");
    let mut qemu = Qemu::start(&elf, &qemu_disk, &cmdline);
    let boot = wait_for(&qemu.console, "@@waiting", BOOT_LIMIT, "QEMU guest boot");
    assert!(boot.iter().any(|l| l.contains("PVH boot, PM timer at 0x608 (ACPI FADT), exit port 0xf4")), "{boot:#?}");
    assert!(boot.iter().any(|l| l.contains("batching doorbell (port 0x510) is absent: plain port I/O")), "{boot:#?}");

    let rec = dir.path().join("qemu.kvmprof");
    // No --guest-memory-map: kvmprof finds QEMU's guest RAM and verifies it.
    let (record, err) = start_record(qemu.pid(), &rec, &[]);
    qemu.go();
    let console = wait_for(&qemu.console, "@@result", BOOT_LIMIT, "QEMU guest workload");
    // isa-debug-exit: status (0 << 1) | 1.
    assert_eq!(qemu.wait(Duration::from_secs(60)), 1, "the guest ended QEMU through isa-debug-exit with status 0");
    let record_err = finish_record(record, err);
    assert!(!record_err.iter().any(|l| l.contains("unknown")), "{record_err:#?}");

    let result = result_json(&console);
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(result["workload"], "disk-write");
    assert_eq!(result["sectors"], SECTORS, "{result}");
    assert_eq!(result["batched"], false, "no doorbell on QEMU: plain port I/O");
    assert_eq!(result["disk_sectors"], DISK_BYTES / 512);
    let sectors = result["sectors"].as_u64().unwrap();

    let profile = recording::load(&rec).unwrap();
    match &profile.meta.guest_memory {
        Some(GuestMemoryOrigin::Verified(how)) => assert!(how.contains("verified") && how.contains(&format!("QEMU PID {}", qemu.pid())), "{how}"),
        other => panic!("the guest memory map was not found and verified: {other:?}"),
    }

    // ide_do_rw_disk's task-file writes, per port, with their caller: 0x1f1-0x1f5 twice per
    // sector (HOB then current bytes), the device register and the command once.
    let report = report_json(&rec, &["--by", "caller", "--vmlinux", path_str(&elf)]);
    let mut per_port = std::collections::BTreeMap::<String, u64>::new();
    for r in rows(&report) {
        let trap = r["function"].as_str().unwrap_or("[unknown]");
        if r["direction"] == "out" && trap.ends_with("::ide_do_rw_disk") {
            assert!(
                r["caller_function"].as_str().is_some_and(|f| f.ends_with("::disk_write_workload")),
                "register write at {} has caller {:?}, not disk_write_workload",
                r["rip"],
                r["caller_function"]
            );
            *per_port.entry(r["port"].as_str().unwrap().to_string()).or_default() += r["count"].as_u64().unwrap();
        }
    }
    let want: std::collections::BTreeMap<String, u64> =
        [("0x1f1", 2), ("0x1f2", 2), ("0x1f3", 2), ("0x1f4", 2), ("0x1f5", 2), ("0x1f6", 1), ("0x1f7", 1)].iter().map(|(p, k)| (p.to_string(), k * sectors)).collect();
    assert_eq!(per_port, want, "ide_do_rw_disk's register writes for the {sectors} sectors the guest reported");
    let total = report["total_exits"].as_u64().unwrap();
    assert_eq!(report["notes"][0], format!("0 of {total} exits (0.00%) have an unknown caller ([unknown])"), "{:#}", report["notes"]);
    // The data port: one exit per word of `rep outsw`, from ide_output_data <- ide_do_rw_disk.
    let data: u64 = rows(&report)
        .iter()
        .filter(|r| r["port"] == "0x1f0" && r["direction"] == "out")
        .inspect(|r| assert!(r["caller_function"].as_str().is_some_and(|f| f.ends_with("::ide_do_rw_disk")), "{r:#}"))
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(data, 256 * sectors);
    let table = run(KVMPROF, &["report", path_str(&rec), "--by", "caller", "--vmlinux", path_str(&elf)]);
    assert!(stdout(&table).lines().any(|l| l.contains("ide_do_rw_disk") && l.contains("disk_write_workload")), "{}", stdout(&table));

    // The same workload on tinyvmm writes the same bytes.
    let tiny_disk = dir.path().join("tinyvmm.img");
    zeroed_disk(&tiny_disk);
    let count = SECTORS.to_string();
    let o = run(
        path_str(&tinyvmm()),
        &["run", "--workload", "disk-write", "--count", &count, "--skip-pmtmr-calibration", "--disk", path_str(&tiny_disk), "--quiet"],
    );
    assert!(o.status.success(), "tinyvmm: {}", stderr(&o));
    let (a, b) = (std::fs::read(&qemu_disk).unwrap(), std::fs::read(&tiny_disk).unwrap());
    assert_eq!(a.len(), b.len());
    assert!(a == b, "QEMU's image differs from tinyvmm's at byte {:?}", a.iter().zip(&b).position(|(x, y)| x != y));
    assert!(a[..512].iter().any(|x| *x != 0), "the workload wrote sector 0");
}

#[test]
fn a_qemu_whose_memory_cannot_be_verified_gets_unknown_callers_and_one_line_why() {
    require_qemu();
    let dir = tmpdir();
    let elf = guest_elf(dir.path());
    let disk = dir.path().join("disk.img");
    zeroed_disk(&disk);
    // No QMP socket; the guest waits (polling COM1) forever.
    let qemu = Qemu::start(&elf, &disk, "workload=disk-write count=1 skip-pmtmr-calibration wait=serial");
    wait_for(&qemu.console, "@@waiting", BOOT_LIMIT, "QEMU guest boot");
    // The -kernel file no longer holds what QEMU loaded: flip one byte of its code.
    let mut bytes = std::fs::read(&elf).unwrap();
    bytes[0x1000 + 0x40] ^= 0xff;
    std::fs::write(&elf, &bytes).unwrap();

    let rec = dir.path().join("unverified.kvmprof");
    let (record, err) = start_record(qemu.pid(), &rec, &["--duration", "3"]);
    let record_err = finish_record(record, err);
    let warn: Vec<&String> = record_err.iter().filter(|l| l.contains("callers are [unknown]")).collect();
    assert_eq!(warn.len(), 1, "{record_err:#?}");
    assert!(warn[0].contains("none of its") && warn[0].contains("-kernel image"), "{}", warn[0]);
    drop(qemu);

    let profile = recording::load(&rec).unwrap();
    let why = match &profile.meta.guest_memory {
        Some(GuestMemoryOrigin::Unverified(why)) => why.clone(),
        other => panic!("expected an unverified map, got {other:?}"),
    };
    assert!(!why.contains('\n'), "one line: {why}");
    let report = report_json(&rec, &["--by", "caller"]);
    let total = report["total_exits"].as_u64().unwrap();
    // The guest polls COM1 a few times a second while it waits.
    assert!(total >= 5, "the guest's COM1 polling exits: {total}");
    for r in rows(&report) {
        assert!(r["caller_rip"].is_null() && r["caller_function"].is_null(), "a caller from an unverified map: {r:#}");
    }
    let note = report["notes"][0].as_str().unwrap();
    assert_eq!(note, format!("{total} of {total} exits (100.00%) have an unknown caller ([unknown]): no guest memory map could be verified: {why}"));
}

/// With a QMP socket the layout comes from QMP (`pc.ram` in two pieces around the VGA/BIOS
/// hole), still checked against the image.
#[test]
fn with_a_qmp_socket_the_layout_comes_from_qmp_and_is_verified() {
    require_qemu();
    let dir = tmpdir();
    let elf = guest_elf(dir.path());
    let disk = dir.path().join("disk.img");
    zeroed_disk(&disk);
    let sock = dir.path().join("qmp.sock");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let qemu = Qemu::start_with(&elf, &disk, "workload=disk-write count=1 wait=serial", &["-qmp", &qmp]);
    // Booted: QEMU's main loop (which answers QMP) is not busy initialising the machine.
    wait_for(&qemu.console, "@@waiting", BOOT_LIMIT, "QEMU guest boot");
    let rec = dir.path().join("qmp.kvmprof");
    let (record, err) = start_record(qemu.pid(), &rec, &["--duration", "1"]);
    finish_record(record, err);
    match recording::load(&rec).unwrap().meta.guest_memory {
        Some(GuestMemoryOrigin::Verified(how)) => {
            // pc.ram around the VGA hole, in as many pieces as the firmware's PAM settings left.
            assert!(how.contains("(64 MiB, ") && how.contains(" region(s), from QMP's pc.ram layout), verified: guest-physical 0x100000.."), "{how}")
        }
        other => panic!("QMP's layout was not used and verified: {other:?}"),
    }
}

/// `report --by vm`: every VM of an all-VM recording, by process, with its name.
#[test]
fn report_by_vm_has_one_row_per_vm_process_with_its_name() {
    require_live();
    let dir = tmpdir();
    let rec = dir.path().join("all.kvmprof");
    let mut record = Command::new(KVMPROF)
        .args(["record", "-o", path_str(&rec), "--duration", "8"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = lines_of(record.stderr.take().unwrap());
    wait_for(&err, "kvmprof: recording", Duration::from_secs(60), "kvmprof record");
    const LOOPS: u64 = 3000;
    let vms: Vec<(Child, &str)> = ["vm-alpha", "vm-beta"]
        .into_iter()
        .map(|name| {
            let c = Command::new(tinyvmm())
                .args(["run", "--workload", "pio-loop", "--count", &LOOPS.to_string(), "--skip-pmtmr-calibration", "--quiet", "--name", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            (c, name)
        })
        .collect();
    let mut pids = Vec::new();
    for (mut c, name) in vms {
        pids.push((c.id(), name));
        assert!(c.wait().unwrap().success(), "tinyvmm {name}");
    }
    finish_record(record, err);

    let profile = recording::load(&rec).unwrap();
    let v = report_json(&rec, &["--by", "vm"]);
    assert_eq!(v["by"], "vm");
    for (pid, name) in pids {
        let row = rows(&v).iter().find(|r| r["pid"] == pid).unwrap_or_else(|| panic!("no row for {name} (PID {pid}): {v:#}"));
        assert_eq!(row["vm"], name, "{row:#}");
        let exits: u64 = profile.exits.iter().filter(|e| e.tgid == pid).map(|e| e.stats.count).sum();
        assert_eq!(row["count"], exits, "{row:#}");
        assert!(exits >= LOOPS, "{name}: {exits} exits for {LOOPS} null-port writes");
    }
    let table = stdout(&run(KVMPROF, &["report", path_str(&rec), "--by", "vm"]));
    assert!(table.contains("VM (pid)") && table.contains("vm-alpha (") && table.contains("vm-beta ("), "{table}");
}
