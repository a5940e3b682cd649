//! What the parts of an eBPF program cost on this host, by the kernel's own `bpf_stats`: a
//! handful of minimal raw-tracepoint programs (empty; one helper call; a BPF-to-BPF call; a
//! kernel read by the helper and by a direct load),
//! each attached alone to `kvm_pio` while an exit-bound guest runs, in interleaved rounds. The
//! difference to the empty program is the part's price; BENCHMARKS.md ("Peer benchmark") uses
//! them to say where kvmprof's ns per exit go. Needs root, KVM, BPF.
//!   sudo target/release/examples/bpf_floor [ROUNDS] [SECONDS]   (default: 5 rounds, 2 s each)
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use profiler_daemon::live::kfunc::{load_raw_tracepoint_program, Insn};


const EXIT: Insn = Insn(0x95, 0, 0, 0);
const R0_ZERO: Insn = Insn(0xb7, 0, 0, 0);
const fn helper(id: i32) -> Insn {
    Insn(0x85, 0, 0, id)
}

/// The variants: a name and the program. `cast_id`: the kfunc `bpf_rdonly_cast` in this
/// kernel's BTF, for the direct load (no such variant without it).
fn variants(cast_id: Option<u32>) -> Vec<(&'static str, Vec<Insn>)> {
    const KTIME_GET_NS: i32 = 5;
    const GET_SMP_PROCESSOR_ID: i32 = 8;
    const GET_CURRENT_PID_TGID: i32 = 14;
    const GET_CURRENT_TASK: i32 = 35;
    const PROBE_READ_KERNEL: i32 = 113;
    let mut v = vec![
        ("empty", vec![R0_ZERO, EXIT]),
        ("bpf_get_current_pid_tgid", vec![helper(GET_CURRENT_PID_TGID), R0_ZERO, EXIT]),
        ("bpf_get_current_task", vec![helper(GET_CURRENT_TASK), R0_ZERO, EXIT]),
        ("bpf_get_smp_processor_id (inlined by the verifier)", vec![helper(GET_SMP_PROCESSOR_ID), R0_ZERO, EXIT]),
        ("bpf_ktime_get_ns", vec![helper(KTIME_GET_NS), R0_ZERO, EXIT]),
        ("bpf_ktime_get_ns twice", vec![helper(KTIME_GET_NS), helper(KTIME_GET_NS), R0_ZERO, EXIT]),
        // call pc+2 (src_reg BPF_PSEUDO_CALL) into a subprogram that returns 0.
        ("a BPF-to-BPF call", vec![Insn(0x85, 0x10, 0, 2), R0_ZERO, EXIT, R0_ZERO, EXIT]),
    ];
    // kvm_pio's fifth argument, `data`: a kernel address (the vcpu's PIO page), read 8 bytes.
    const DATA_ARG: Insn = Insn(0x79, 0x11, 32, 0); // r1 = *(u64 *)(r1 + 32)
    v.push((
        "bpf_probe_read_kernel, 8 bytes",
        vec![
            Insn(0xbf, 0x13, 0, 0), // r3 = r1 (ctx)
            Insn(0x79, 0x33, 32, 0), // r3 = *(u64 *)(r3 + 32): the source
            Insn(0xbf, 0xa1, 0, 0), // r1 = r10
            Insn(0x07, 0x01, 0, -8), // r1 += -8: the destination
            Insn(0xb7, 0x02, 0, 8),  // r2 = 8
            helper(PROBE_READ_KERNEL),
            R0_ZERO,
            EXIT,
        ],
    ));
    if let Some(id) = cast_id {
        v.push((
            "a direct load through bpf_rdonly_cast (kvmprof's kernel reads)",
            vec![DATA_ARG, Insn(0xb7, 0x02, 0, 0), Insn(0x85, 0x20, 0, id as i32), Insn(0x79, 0x00, 0, 0), R0_ZERO, EXIT],
        ));
    }
    v
}

fn bpf(cmd: libc::c_long, attr: &[u64]) -> Result<RawFd> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` prefix for `cmd`; the kernel reads
    // size_of_val(attr) bytes of it and the pointers in it outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), std::mem::size_of_val(attr)) };
    if r < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    Ok(r as RawFd)
}

/// Loads `insns` as a raw tracepoint program and attaches it to `kvm_pio`: (program, link).
fn attach(insns: &[Insn]) -> Result<(OwnedFd, OwnedFd)> {
    const RAW_TRACEPOINT_OPEN: libc::c_long = 17;
    let prog = load_raw_tracepoint_program(insns).context("loading a probe program")?;
    let tracepoint = c"kvm_pio";
    let open = [tracepoint.as_ptr() as u64, std::os::fd::AsRawFd::as_raw_fd(&prog) as u64, 0, 0];
    // SAFETY: a fresh descriptor from the kernel, owned by nobody else.
    let link = unsafe { OwnedFd::from_raw_fd(bpf(RAW_TRACEPOINT_OPEN, &open).context("attaching to kvm_pio")?) };
    Ok((prog, link))
}

/// `run_time_ns / run_cnt` of a loaded program (BPF_OBJ_GET_INFO_BY_FD).
fn ns_per_run(prog: &OwnedFd) -> Result<f64> {
    const OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // struct bpf_prog_info: run_time_ns and run_cnt at bytes 192 and 200 (u64 24 and 25).
    let mut info = [0u64; 64];
    let get = [std::os::fd::AsRawFd::as_raw_fd(prog) as u64 | (std::mem::size_of_val(&info) as u64) << 32, info.as_mut_ptr() as u64, 0];
    bpf(OBJ_GET_INFO_BY_FD, &get)?;
    let (time, count) = (info[24], info[25]);
    if count == 0 {
        bail!("the probe program never ran: is the guest making exits?");
    }
    Ok(time as f64 / count as f64)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().map_or(Ok(5), |a| a.parse())?;
    let seconds: u64 = args.get(1).map_or(Ok(2), |a| a.parse())?;
    let exe = std::env::current_exe()?;
    let loop_bin = exe.parent().and_then(|d| d.parent()).context("target dir")?.join("kvm-exit-loop");
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").context("enabling bpf_stats (needs root)")?;
    let btf = profiler_daemon::live::btf::Btf::from_file(std::path::Path::new(profiler_daemon::live::btf::VMLINUX_BTF))?;
    let variants = variants(btf.func_id(profiler_common::kfunc::RDONLY_CAST));
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        for (i, (_, insns)) in variants.iter().enumerate() {
            let mut guest = Command::new(&loop_bin)
                .args(["--long-mode", "--outs", "1000000000"])
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("{} (cargo build --release --workspace --bins)", loop_bin.display()))?;
            let attached = attach(insns);
            if attached.is_ok() {
                std::thread::sleep(std::time::Duration::from_secs(seconds));
            }
            let measured = attached.and_then(|(prog, _link)| ns_per_run(&prog));
            guest.kill()?;
            guest.wait()?;
            ns[i].push(measured?);
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let empty = median(&mut ns[0].clone());
    println!("| raw tracepoint program on kvm_pio | ns per run (median) | over the empty program |");
    println!("|---|---:|---:|");
    for ((name, _), v) in variants.iter().zip(ns.iter_mut()) {
        let m = median(v);
        println!("| {name} | {m:.0} | {:+.0} |", m - empty);
    }
    println!("\n{rounds} interleaved rounds of {seconds} s each; bpf_stats includes its own clock read per run.");
    Ok(())
}
