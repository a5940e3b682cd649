//! Writes real-format hw-source trace text (`kvm_exit` / `kvm_pio` / `kvm_mmio` / `kvm_entry`,
//! as ftrace or `perf script` print them on a VMX host, see tests/hw_import.rs) with exactly N
//! exits on two vCPU threads, for `scripts/bench-import.sh`.
//!
//! usage: gen_hw_trace ftrace|perf-script EXITS OUT_FILE
use std::io::{BufWriter, Write};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, format, exits, out] = &args[..] else {
        eprintln!("usage: gen_hw_trace ftrace|perf-script EXITS OUT_FILE");
        std::process::exit(2);
    };
    let ftrace = match format.as_str() {
        "ftrace" => true,
        "perf-script" => false,
        _ => {
            eprintln!("format must be ftrace or perf-script");
            std::process::exit(2);
        }
    };
    let exits: u64 = exits.parse().expect("EXITS is a number");
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(out).expect("create OUT_FILE"));
    if ftrace {
        writeln!(w, "# tracer: nop\n#\n# entries-in-buffer/entries-written: {exits}/{exits}   #P:2\n#").unwrap();
    }
    let mut ts_ns: u64 = 5_000_000_000_000;
    for i in 0..exits {
        let vcpu = i % 2;
        let tid = 4242 + vcpu;
        let cpu = vcpu + 2;
        let line = |w: &mut BufWriter<std::fs::File>, ts: u64, ev: &str| {
            let (s, us) = (ts / 1_000_000_000, ts % 1_000_000_000 / 1000);
            if ftrace {
                writeln!(w, "       CPU {vcpu}/KVM-{tid}    (4240) [{cpu:03}] d..2. {s:5}.{us:06}: {ev}").unwrap();
            } else {
                writeln!(w, " qemu-system-x86  4240/{tid} [{cpu:03}] {s}.{us:06}: kvm:{ev}").unwrap();
            }
        };
        let rip = 0xffffffff81000000u64 + (i % 512) * 0x40;
        let (reason, detail, entry_rip) = match i % 10 {
            0..=5 => ("IO_INSTRUCTION", Some(format!("kvm_pio: pio_write at {:#x} size 1 count 1 val 0x{:x}", 0x1f0 + i % 8, i % 256)), rip + 2),
            6 | 7 => ("EPT_VIOLATION", Some(format!("kvm_mmio: mmio write len 4 gpa 0x{:x} val 0x1", 0xfebf0000u64 + (i % 16) * 4)), rip + 3),
            8 => ("HLT", None, rip + 1),
            _ => ("MSR_WRITE", None, rip + 2),
        };
        line(
            &mut w,
            ts_ns,
            &format!("kvm_exit: vcpu {vcpu} reason {reason} rip {rip:#x} info1 0x0000000001f70000 info2 0x0000000000000000 intr_info 0x00000000 error_code 0x00000000 requests 0x0000000000000000"),
        );
        if let Some(d) = detail {
            line(&mut w, ts_ns + 1_000, &d);
        }
        let dur = 2_000 + (i % 7) * 1_000;
        line(&mut w, ts_ns + dur, &format!("kvm_entry: vcpu {vcpu}, rip {entry_rip:#x} intr_info 0x00000000 error_code 0x00000000"));
        ts_ns += dur + 1_000 * (vcpu + 1);
    }
    w.flush().unwrap();
}
