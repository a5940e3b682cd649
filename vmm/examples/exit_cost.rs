//! Per-exit cost of tinyvmm vs a bare KVM_RUN loop, measured in one run.
//!
//! Both run the same three guest instructions per exit in 64-bit mode
//! (`out 0x80, al; dec rcx; jnz`), so the difference is what tinyvmm's loop adds:
//! exit decoding, the port bus, statistics, the timer check.
//!
//! - bare: kvm-ioctls only; `loop { match vcpu.run() { IoOut => n += 1, Hlt => break } }`,
//!   timed around the loop.
//! - tinyvmm: the library's full VM (all devices) running the bundled guest's `pio-loop`
//!   workload, timed by the guest on its PM timer around the loop.
//!
//! `cargo run -p vmm --release --example exit_cost -- [EXITS] [ROUNDS]`

use kvm_ioctls::{Kvm, VcpuExit};
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm::{abi, boot, VmConfig, Workload};

fn bare_loop(n: u64) -> f64 {
    let kvm = Kvm::new().expect("/dev/kvm");
    let size = 4u64 << 20;
    // Before the VM, so it is dropped after it.
    let mem = boot::create_memory(size).expect("memory");
    let vm = kvm.create_vm().expect("create vm");
    let host = mem.get_host_address(GuestAddress(0)).expect("host address");
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: host as u64,
    };
    // SAFETY: the region is exactly `mem`'s live mmap (host address and size), and `mem`
    // outlives the VM (declared first, so dropped last).
    unsafe { vm.set_user_memory_region(region) }.expect("memory region");
    let mut code = vec![0x66, 0xba, 0x80, 0x00, 0x48, 0xb9];
    code.extend_from_slice(&n.to_le_bytes());
    code.extend_from_slice(&[0xee, 0x48, 0xff, 0xc9, 0x75, 0xfa, 0xf4]);
    mem.write_slice(&code, GuestAddress(abi::KERNEL_MIN_ADDR)).expect("code");
    boot::write_boot_structures(&mem, &abi::BootParams::default()).expect("boot structures");
    let mut vcpu = vm.create_vcpu(0).expect("vcpu");
    let cpuid = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).expect("cpuid");
    vcpu.set_cpuid2(&cpuid).expect("cpuid");
    let sregs = vcpu.get_sregs().expect("sregs");
    vcpu.set_sregs(&boot::long_mode_sregs(sregs)).expect("sregs");
    vcpu.set_regs(&boot::entry_regs(abi::KERNEL_MIN_ADDR)).expect("regs");
    let mut exits = 0u64;
    let t0 = Instant::now();
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(..) => exits += 1,
            VcpuExit::Hlt => break,
            e => panic!("unexpected exit {e:?}"),
        }
    }
    let ns = t0.elapsed().as_nanos() as f64;
    assert_eq!(exits, n);
    ns / n as f64
}

fn tinyvmm_loop(n: u64) -> f64 {
    let mut cfg = VmConfig::new(Workload::PioLoop);
    cfg.count = n;
    cfg.skip_pmtmr_calibration = true;
    cfg.echo_console = false;
    let r = vmm::run(&cfg).expect("tinyvmm run");
    assert!(r.success(), "{}", r.outcome);
    assert_eq!(r.stats.by_port[usize::from(abi::PORT_NULL)], n);
    let pm = r.guest.as_ref().and_then(|g| g.pm_ticks).expect("guest pm_ticks") as f64;
    pm / 3_579_545.0 * 1e9 / n as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let (mut bare, mut tiny, mut ratios) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        // Alternate the order so drift in machine load hits both sides alike.
        let (b, t) = if round % 2 == 0 {
            let b = bare_loop(n);
            (b, tinyvmm_loop(n))
        } else {
            let t = tinyvmm_loop(n);
            (bare_loop(n), t)
        };
        println!("round {round}: bare {b:.0} ns/exit, tinyvmm {t:.0} ns/exit, ratio {:.3}", t / b);
        bare.push(b);
        tiny.push(t);
        ratios.push(t / b);
    }
    println!(
        "median over {rounds} rounds of {n} exits: bare {:.2} us/exit, tinyvmm {:.2} us/exit, ratio {:.3}",
        median(&mut bare) / 1000.0,
        median(&mut tiny) / 1000.0,
        median(&mut ratios)
    );
}
