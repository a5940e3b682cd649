//! `kvmprof record` on QEMU, a VMM users really run: a tiny multiboot guest booted by QEMU's
//! `-kernel` loader through SeaBIOS makes exactly known port exits at known RIPs, then ends
//! QEMU through `isa-debug-exit`. Needs root, KVM, BPF, tracefs and `qemu-system-x86_64`
//! (all installed by `scripts/setup.sh`): fails, never skips, without them.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use profiler_daemon::live::detect_source;
use profiler_daemon::model::{recording, Access, Direction, Exit};

const QEMU: &str = "qemu-system-x86_64";
const OUTS: u32 = 3001;
const INS: u32 = 1207;
/// Ports no device of QEMU's `pc` machine claims and SeaBIOS never touches while booting (a
/// recording of the boot shows them only at the guest's RIPs), so their per-port totals are
/// exactly the guest's.
const OUT_PORT: u16 = 0x5f1;
const IN_PORT: u16 = 0x5f5;
/// `isa-debug-exit`: a write of V makes QEMU exit with status (V << 1) | 1.
const DEBUG_EXIT_PORT: u8 = 0xf4;
const EXIT_CODE: u8 = 0x21;
const QEMU_STATUS: i32 = ((EXIT_CODE as i32) << 1) | 1;
/// Longest a whole recorded run may take (SeaBIOS boots in ~3 s here, emulated).
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// A 32-bit multiboot (v1) ELF with exactly known port exits.
///
/// One `PT_LOAD` segment maps the whole file at [`MultibootGuest::LOAD_ADDR`]: ELF header
/// (52 bytes), program header (32), multiboot header (12, at file offset 84: 4-aligned and
/// within the first 8 KiB), then the code. No a.out kludge (flag 16): QEMU's loader then takes
/// the load address and entry point from the ELF. It enters in 32-bit protected mode with flat
/// segments (CS base 0) and paging off, so a RIP is the linear address: load address + offset.
struct MultibootGuest {
    elf: Vec<u8>,
    out_rip: u64,
    in_rip: u64,
    exit_rip: u64,
}

impl MultibootGuest {
    const LOAD_ADDR: u32 = 0x10_0000;
    const EHDR: usize = 52;
    const PHDR: usize = 32;
    const MB_MAGIC: u32 = 0x1BAD_B002;
    const MB_FLAGS: u32 = 0;

    fn new(outs: u32, ins: u32, out_port: u16, in_port: u16) -> MultibootGuest {
        let mb_off = Self::EHDR + Self::PHDR;
        let code_off = mb_off + 12;
        let at = |c: &Vec<u8>| (Self::LOAD_ADDR as usize + code_off + c.len()) as u64;

        let mut code = vec![0xFA]; // cli
        let out_rip = port_loop(&mut code, outs, out_port, 0xEE, at); // out dx, al
        let in_rip = port_loop(&mut code, ins, in_port, 0xEC, at); // in al, dx
        code.extend_from_slice(&[0xB0, EXIT_CODE]); // mov al, EXIT_CODE
        let exit_rip = at(&code);
        code.extend_from_slice(&[0xE6, DEBUG_EXIT_PORT]); // out imm8, al
        code.extend_from_slice(&[0xF4, 0xEB, 0xFD]); // l: hlt; jmp l (if QEMU did not exit)

        let file_len = (code_off + code.len()) as u32;
        let entry = Self::LOAD_ADDR + code_off as u32;
        let mut e = Vec::with_capacity(file_len as usize);
        // ELF header: ELFCLASS32, little-endian, version 1, System V.
        e.extend_from_slice(&[0x7F, b'E', b'L', b'F', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for half in [2u16 /* ET_EXEC */, 3 /* EM_386 */] {
            e.extend_from_slice(&half.to_le_bytes());
        }
        for word in [1u32 /* version */, entry, Self::EHDR as u32 /* phoff */, 0 /* shoff */, 0 /* flags */] {
            e.extend_from_slice(&word.to_le_bytes());
        }
        for half in [Self::EHDR as u16, Self::PHDR as u16, 1 /* phnum */, 40 /* shentsize */, 0 /* shnum */, 0 /* shstrndx */] {
            e.extend_from_slice(&half.to_le_bytes());
        }
        assert_eq!(e.len(), Self::EHDR);
        // Program header: PT_LOAD of the whole file at LOAD_ADDR, RWX.
        for word in [1u32, 0, Self::LOAD_ADDR, Self::LOAD_ADDR, file_len, file_len, 7, 0x1000] {
            e.extend_from_slice(&word.to_le_bytes());
        }
        assert_eq!(e.len(), mb_off);
        let checksum = 0u32.wrapping_sub(Self::MB_MAGIC).wrapping_sub(Self::MB_FLAGS);
        for word in [Self::MB_MAGIC, Self::MB_FLAGS, checksum] {
            e.extend_from_slice(&word.to_le_bytes());
        }
        assert!(mb_off % 4 == 0 && mb_off + 12 <= 8192, "multiboot header must be 4-aligned in the first 8 KiB");
        e.extend_from_slice(&code);
        assert_eq!(e.len(), file_len as usize);
        MultibootGuest { elf: e, out_rip, in_rip, exit_rip }
    }

    fn write(&self, dir: &Path) -> PathBuf {
        let p = dir.join("guest.elf");
        std::fs::write(&p, &self.elf).expect("writing the guest ELF");
        p
    }
}

/// 32-bit code: `mov dx, port; mov ecx, n; test ecx, ecx; jz done; l: <op>; dec ecx; jnz l;
/// done:`. Returns the RIP of `<op>`.
fn port_loop(c: &mut Vec<u8>, n: u32, port: u16, op: u8, at: impl Fn(&Vec<u8>) -> u64) -> u64 {
    c.extend_from_slice(&[0x66, 0xBA]); // mov dx, imm16
    c.extend_from_slice(&port.to_le_bytes());
    c.push(0xB9); // mov ecx, imm32
    c.extend_from_slice(&n.to_le_bytes());
    c.extend_from_slice(&[0x85, 0xC9]); // test ecx, ecx
    c.extend_from_slice(&[0x74, 0x04]); // jz +4: over the 4-byte loop body
    let op_at = at(c);
    c.push(op);
    c.push(0x49); // dec ecx
    c.extend_from_slice(&[0x75, 0xFC]); // jnz -4: back to op
    op_at
}

/// Everything a live QEMU run needs, checked up front with what to run when it is missing.
fn require_qemu_live() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the QEMU test must run as root (eBPF, tracefs): run `sudo scripts/test` after `scripts/setup.sh`");
    assert!(Path::new("/dev/kvm").exists(), "/dev/kvm is missing: the QEMU test needs KVM (see scripts/setup.sh)");
    let qemu = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(QEMU)).find(|p| p.is_file()))
        .unwrap_or_else(|| panic!("{QEMU} is not installed: run `scripts/setup.sh` (it installs qemu-system-x86)"));
    require_live();
    qemu
}

fn qemu_args(qemu: &Path, kernel: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec![qemu.to_str().unwrap().into()];
    a.extend(
        [
            // debug-threads=on names the vCPU thread `CPU 0/KVM` (otherwise it keeps the
            // process name and kvmprof cannot tell its vCPU index).
            "-name",
            "kvmprof-qemu-test,debug-threads=on",
            "-enable-kvm",
            "-machine",
            "pc",
            "-m",
            "64",
            "-nographic",
            "-no-reboot",
            "-kernel",
            path_str(kernel),
            "-device",
            &format!("isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04"),
            "-serial",
            "none",
            "-monitor",
            "none",
            "-display",
            "none",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a
}

/// The direct children of `pid` (the command `kvmprof record` started).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        if let Ok(s) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

fn kill(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions; `pid` is a process this test started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// Runs `kvmprof ARGS` to its end, killing what it started if it outlives [`RUN_LIMIT`].
fn run_bounded(args: &[String]) -> Output {
    let mut child = Command::new(KVMPROF).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("cannot run kvmprof");
    let deadline = Instant::now() + RUN_LIMIT;
    while child.try_wait().expect("waiting for kvmprof").is_none() {
        if Instant::now() > deadline {
            children(child.id()).into_iter().for_each(kill);
            std::thread::sleep(Duration::from_secs(2));
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("`kvmprof {}` still ran after {RUN_LIMIT:?} (the guest never ended QEMU?): {}", args.join(" "), stderr(&o));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn qemu_guest_exits_are_counted_exactly_at_the_guest_rips() {
    let qemu = require_qemu_live();
    let dir = tmpdir();
    let guest = MultibootGuest::new(OUTS, INS, OUT_PORT, IN_PORT);
    let kernel = guest.write(dir.path());
    let rec = dir.path().join("qemu.kvmprof");

    let mut args: Vec<String> = ["record", "-o", path_str(&rec), "--"].iter().map(|s| s.to_string()).collect();
    args.extend(qemu_args(&qemu, &kernel));
    let started = Instant::now();
    let o = run_bounded(&args);
    let took = started.elapsed();
    // QEMU ends with isa-debug-exit's status; kvmprof still succeeds and saves the recording.
    assert!(o.status.success(), "record failed (is BPF available? see scripts/setup.sh): {}", stderr(&o));
    assert!(stderr(&o).contains(&format!("note: the command exited with status {QEMU_STATUS}")), "{}", stderr(&o));
    let loaded = recording::load(&rec).expect("the recording is saved");
    assert_eq!(loaded.meta.command_status, Some(QEMU_STATUS), "the guest reached its isa-debug-exit write");
    assert!(took < Duration::from_secs(60), "a QEMU boot and {} exits took {took:?}", OUTS + INS);
    // Exact counts need every exit aggregated: SeaBIOS' boot (one MMIO key per framebuffer
    // address it clears) must not fill the in-kernel exit map before the guest runs.
    assert_eq!(
        (loaded.meta.exit_keys_full, loaded.meta.threads_full),
        (0, 0),
        "in-kernel maps were full ({} exit keys recorded): exits were lost",
        loaded.exits.len()
    );

    let v = report_json(&rec, &["--by", "rip"]);
    assert_eq!(v["source"], detect_source().name());
    assert_eq!(loaded.meta.source, detect_source());
    let out = row_at(&v, "rip", &format!("{:#x}", guest.out_rip));
    assert_eq!(out["count"], OUTS as u64, "{out:#}");
    assert_eq!(out["reason"], io_reason());
    assert_eq!(out["port"], format!("{OUT_PORT:#x}"));
    assert_eq!(out["direction"], "out");
    assert!(out["time_ns"].as_u64().unwrap() > 0, "{out:#}");

    let inn = row_at(&v, "rip", &format!("{:#x}", guest.in_rip));
    assert_eq!(inn["count"], INS as u64, "{inn:#}");
    assert_eq!(inn["reason"], io_reason());
    assert_eq!(inn["port"], format!("{IN_PORT:#x}"));
    assert_eq!(inn["direction"], "in");
    assert!(inn["time_ns"].as_u64().unwrap() > 0, "{inn:#}");

    // The isa-debug-exit write: QEMU exits while handling it, so the exit never completes.
    let exit = row_at(&v, "rip", &format!("{:#x}", guest.exit_rip));
    assert_eq!(exit["count"], 1, "{exit:#}");
    assert_eq!(exit["reason"], io_reason(), "{exit:#}");
    assert_eq!(exit["port"], format!("{DEBUG_EXIT_PORT:#x}"));
    assert_eq!(exit["direction"], "out");

    // Nothing else ran in the guest's pages: SeaBIOS' own exits are at its RIPs.
    let guest_end = (MultibootGuest::LOAD_ADDR as usize + guest.elf.len()) as u64;
    let in_guest: Vec<&serde_json::Value> = rows(&v)
        .iter()
        .filter(|r| u64::from_str_radix(r["rip"].as_str().unwrap().trim_start_matches("0x"), 16).is_ok_and(|rip| (MultibootGuest::LOAD_ADDR as u64..guest_end).contains(&rip)))
        .collect();
    assert_eq!(in_guest.len(), 3, "only the guest's three exiting instructions are in its pages: {in_guest:#?}");
    assert!(rows(&v).len() > 3, "SeaBIOS' exits are recorded too");

    // The guest's ports are its own: no firmware or QEMU traffic lands on them.
    let by_port = report_json(&rec, &["--by", "port"]);
    let (po, pi) = (row_at(&by_port, "port", &format!("{OUT_PORT:#x}")), row_at(&by_port, "port", &format!("{IN_PORT:#x}")));
    assert_eq!((po["count"].as_u64(), po["direction"].as_str(), po["reason"].as_str()), (Some(OUTS as u64), Some("out"), Some(io_reason())), "{po:#}");
    assert_eq!((pi["count"].as_u64(), pi["direction"].as_str(), pi["reason"].as_str()), (Some(INS as u64), Some("in"), Some(io_reason())), "{pi:#}");
    // One RIP per port: the same exits, so the same time as the RIP rows.
    assert_eq!(po["time_ns"], out["time_ns"]);
    assert_eq!(pi["time_ns"], inn["time_ns"]);

    // Every exit comes from QEMU's one vCPU thread, `CPU 0/KVM`, mapped to vCPU 0.
    let by_vcpu = report_json(&rec, &["--by", "vcpu"]);
    assert_eq!(rows(&by_vcpu).len(), 1, "one vCPU thread: {by_vcpu:#}");
    let vcpu = &rows(&by_vcpu)[0];
    // vCPU 0 on every source: from `kvm_exit`'s vcpu_id on hw, else from the thread's name.
    assert_eq!(vcpu["vcpu"], 0, "{vcpu:#}");
    // The one row holds every exit, so all exit time.
    assert_eq!(vcpu["count"], v["total_exits"], "{vcpu:#}");
    assert_eq!(vcpu["percent"].as_f64(), Some(100.0), "{vcpu:#}");
    let tid = vcpu["tid"].as_u64().unwrap() as u32;
    let thread = &loaded.threads[&tid];
    assert_eq!(thread.comm, "CPU 0/KVM");
    assert_eq!(thread.vcpu, Some(0));
    assert_eq!(Some(thread.tgid), loaded.meta.pid, "the vCPU thread is QEMU's");
    assert_ne!(tid, thread.tgid, "the vCPU is a thread of its own, not QEMU's main thread");
    // The emulated tracepoints carry no vCPU index (it comes from the thread's name);
    // `kvm_exit` on hw names vCPU 0.
    let tracepoint_vcpu = if source_names_vcpu() { Some(0) } else { None };
    for r in [guest.out_rip, guest.in_rip, guest.exit_rip] {
        let e = loaded.exits.iter().find(|e| e.rip == r).unwrap();
        assert_eq!((e.tid, e.vcpu), (tid, tracepoint_vcpu));
        assert_eq!(loaded.vcpu_of(e), Some(0));
    }
}

/// A QEMU whose guest stays in its `out` loop, followed by PID for a fixed time.
#[test]
fn follows_a_running_qemu_by_pid() {
    let qemu = require_qemu_live();
    let dir = tmpdir();
    let guest = MultibootGuest::new(u32::MAX, 0, OUT_PORT, IN_PORT);
    let kernel = guest.write(dir.path());
    let args = qemu_args(&qemu, &kernel);
    let child = Command::new(&args[0]).args(&args[1..]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(child);
    let pid = child.0.id();
    let out_rip = guest.out_rip;

    // Record in short slices until the guest has booted into its loop, then for 2 s.
    let deadline = Instant::now() + Duration::from_secs(45);
    let rec_path = dir.path().join("pid.kvmprof");
    let record = |secs: &str| {
        let o = run(KVMPROF, &["record", "-o", path_str(&rec_path), "--pid", &pid.to_string(), "--duration", secs]);
        assert!(o.status.success(), "record --pid failed: {}", stderr(&o));
        recording::load(&rec_path).unwrap()
    };
    while profiler_daemon::live::targets::check_vm_pid(pid).is_err() || !record("1").exits.iter().any(|e| e.rip == out_rip) {
        assert!(child.0.try_wait().unwrap().is_none(), "QEMU ended early");
        assert!(Instant::now() < deadline, "the guest never reached its out loop");
        std::thread::sleep(Duration::from_millis(100));
    }
    let rec = record("2");
    assert!(child.0.try_wait().unwrap().is_none(), "QEMU keeps running after kvmprof stops following it");
    drop(child);

    assert_eq!(rec.meta.pid, Some(pid));
    assert_eq!(rec.meta.command, None);
    assert_eq!(rec.meta.source, detect_source());
    let io: Vec<&Exit> = rec.exits.iter().filter(|e| e.reason.name() == io_reason()).collect();
    // Attaching may fall inside one exit, after the `kvm_pio` that names its port (emulated
    // source): that exit is seen without its port, once, at the same RIP.
    let (with_port, straddling): (Vec<&Exit>, Vec<&Exit>) = io.iter().partition(|e| e.access != Access::None);
    assert_eq!(with_port.len(), 1, "in its loop the guest only writes its port: {:#?}", rec.exits);
    if let [s] = straddling.as_slice() {
        assert!(!source_names_vcpu(), "kvm_exit names the exit before its port is traced: {s:?}");
        assert_eq!((s.rip, s.stats.count), (out_rip, 1), "{s:?}");
    } else {
        assert!(straddling.is_empty(), "{:#?}", rec.exits);
    }
    let e = with_port[0];
    assert_eq!((e.rip, e.access), (out_rip, Access::Port { dir: Direction::Out, port: OUT_PORT }));
    assert_eq!(e.tgid, pid);
    let thread = &rec.threads[&e.tid];
    assert_eq!((thread.comm.as_str(), thread.vcpu), ("CPU 0/KVM", Some(0)), "the exits come from QEMU's vCPU thread");
    assert_eq!(e.vcpu, if source_names_vcpu() { Some(0) } else { None }, "the vCPU index the tracepoint gives");
    assert_eq!(rec.vcpu_of(e), Some(0));
    assert_ne!(e.tid, pid);
    assert!(e.stats.count > 10_000, "2 s of a tight out loop: {}", e.stats.count);
    assert!(e.stats.total_ns > 0);
    assert_eq!(e.stats.hist.iter().sum::<u64>(), e.stats.count, "every exit is in the histogram");
}
