//! Benchmark driver for scripts/bench-vmlinux.sh (not a test).
//!
//! `bench-lookup ELF ADDRS_FILE ANSWERS_OUT`: loads ELF, symbolizes every address of
//! ADDRS_FILE (hex, one a line) twice — cold (empty cache) then warm (all cached) — writes
//! the cold answers to ANSWERS_OUT in the shape `addr2line -a -f -i -C` prints (minus
//! discriminators), and prints timings and peak RSS as `key=value` lines.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use symbolizer::Symbolizer;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: bench-lookup ELF ADDRS_FILE ANSWERS_OUT");
        std::process::exit(2);
    }
    let addrs: Vec<u64> = std::fs::read_to_string(&args[2])
        .expect("read addresses")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| u64::from_str_radix(l.trim().trim_start_matches("0x"), 16).expect("hex address"))
        .collect();

    let t = Instant::now();
    let sym = match Symbolizer::from_elf(Path::new(&args[1])) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let load = t.elapsed().as_secs_f64();
    for w in sym.warnings() {
        eprintln!("warning: {w}");
    }

    let t = Instant::now();
    let cold: Vec<_> = addrs.iter().map(|&a| sym.symbolize(a)).collect();
    let cold_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut found = 0usize;
    for &a in &addrs {
        found += sym.symbolize(a).is_ok() as usize;
    }
    let warm_s = t.elapsed().as_secs_f64();

    let mut out = std::io::BufWriter::new(std::fs::File::create(&args[3]).expect("create answers"));
    for (a, answer) in addrs.iter().zip(&cold) {
        writeln!(out, "0x{a:016x}").unwrap();
        match answer {
            Err(_) => writeln!(out, "??\n??:0").unwrap(),
            Ok(frames) => {
                for f in frames.iter() {
                    let file = f.file.as_deref().unwrap_or("??");
                    match f.line {
                        Some(l) => writeln!(out, "{}\n{file}:{l}", f.function).unwrap(),
                        None => writeln!(out, "{}\n{file}:?", f.function).unwrap(),
                    }
                }
            }
        }
    }
    out.flush().unwrap();

    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string()))
        .unwrap_or_default();
    println!("addresses={}", addrs.len());
    println!("found={found}");
    println!("load_s={load:.3}");
    println!("cold_s={cold_s:.3}");
    println!("cold_lookups_per_s={:.0}", addrs.len() as f64 / cold_s);
    println!("warm_s={warm_s:.4}");
    println!("warm_lookups_per_s={:.0}", addrs.len() as f64 / warm_s);
    println!("peak_rss_kib={hwm}");
}
