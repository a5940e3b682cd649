//! The "same guest, two device models" table (BENCHMARKS.md), from two recordings of the
//! bundled guest's disk-write (tinyvmm, QEMU) and bpftrace's user-space time per exit.
//! Run by `scripts/bench-two-vmms.sh`:
//!   two_vmms_table SECTORS TINYVMM.kvmprof QEMU.kvmprof USER.txt
use std::collections::BTreeMap;
use std::path::Path;

use profiler_daemon::analysis::percentile::hist_quantile;
use profiler_daemon::model::{recording, Direction, Profile};

const IDE_PORTS: [u16; 9] = [0x1f0, 0x1f1, 0x1f2, 0x1f3, 0x1f4, 0x1f5, 0x1f6, 0x1f7, 0x3f6];

#[derive(Default, Clone)]
struct Cell {
    count: u64,
    ns: u64,
    hist: Vec<u64>,
    user_ns: u64,
    user_n: u64,
}

impl Cell {
    fn add(&mut self, count: u64, ns: u64, hist: &[u64]) {
        self.count += count;
        self.ns += ns;
        if self.hist.len() < hist.len() {
            self.hist.resize(hist.len(), 0);
        }
        for (a, b) in self.hist.iter_mut().zip(hist) {
            *a += b;
        }
    }
    fn mean(&self) -> f64 {
        self.ns as f64 / self.count.max(1) as f64 / 1e3
    }
    fn user_mean(&self) -> Option<f64> {
        (self.user_n > 0).then(|| self.user_ns as f64 / self.user_n as f64 / 1e3)
    }
}

/// `@user_ns[PID, PORT, DIR]: N` and `@user_n[...]` lines of bpftrace's map dump.
fn user_times(text: &str) -> BTreeMap<(u32, u16, bool), (u64, u64)> {
    let mut m: BTreeMap<(u32, u16, bool), (u64, u64)> = BTreeMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once('[') else { continue };
        let Some((key, value)) = rest.split_once("]: ") else { continue };
        let k: Vec<u64> = key.split(", ").filter_map(|v| v.trim().parse().ok()).collect();
        let (Ok(v), [pid, port, dir]) = (value.trim().parse::<u64>(), k.as_slice()) else { continue };
        let e = m.entry((*pid as u32, *port as u16, *dir == 1)).or_default();
        match name {
            "@user_ns" => e.0 = v,
            "@user_n" => e.1 = v,
            _ => {}
        }
    }
    m
}

fn cells(p: &Profile, user: &BTreeMap<(u32, u16, bool), (u64, u64)>) -> BTreeMap<(u16, bool), Cell> {
    let pid = p.meta.pid.expect("a recording of one VMM (a command or --pid)");
    let mut m: BTreeMap<(u16, bool), Cell> = BTreeMap::new();
    for e in &p.exits {
        if let Some((dir, port)) = e.access.port() {
            if e.tgid == pid && IDE_PORTS.contains(&port) {
                m.entry((port, dir == Direction::Out)).or_default().add(e.stats.count, e.stats.total_ns, &e.stats.hist);
            }
        }
    }
    for (k, c) in m.iter_mut() {
        if let Some((ns, n)) = user.get(&(pid, k.0, k.1)) {
            c.user_ns = *ns;
            c.user_n = *n;
        }
    }
    m
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 5 {
        eprintln!("usage: two_vmms_table SECTORS TINYVMM.kvmprof QEMU.kvmprof USER.txt");
        std::process::exit(2);
    }
    let sectors: u64 = a[1].parse().expect("SECTORS is a number");
    let load = |p: &str| recording::load(Path::new(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let user = user_times(&std::fs::read_to_string(&a[4]).expect("bpftrace output"));
    let (t, q) = (cells(&load(&a[2]), &user), cells(&load(&a[3]), &user));
    // Per WRITE SECTORS EXT command (one per sector); the run's one IDENTIFY DEVICE and one
    // FLUSH CACHE EXT are spread over them.
    let commands = sectors as f64;
    let mut keys: Vec<(u16, bool)> = t.keys().chain(q.keys()).copied().collect();
    keys.sort();
    keys.dedup();
    let total = |m: &BTreeMap<(u16, bool), Cell>| {
        let mut c = Cell::default();
        for x in m.values() {
            c.add(x.count, x.ns, &x.hist);
            c.user_ns += x.user_ns;
            c.user_n += x.user_n;
        }
        c
    };
    let (tt, qt) = (total(&t), total(&q));
    println!("| IDE port | exits/sector tinyvmm | exits/sector QEMU | mean µs tinyvmm | mean µs QEMU | p99 µs tinyvmm | p99 µs QEMU | user / kernel µs tinyvmm | user / kernel µs QEMU |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let empty = Cell::default();
    let split = |c: &Cell| match c.user_mean() {
        Some(u) => format!("{u:.1} / {:.1}", (c.mean() - u).max(0.0)),
        None => "-".into(),
    };
    let row = |label: String, x: &Cell, y: &Cell| {
        println!(
            "| {label} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            x.count as f64 / commands,
            y.count as f64 / commands,
            x.mean(),
            y.mean(),
            hist_quantile(&x.hist, 0.99) as f64 / 1e3,
            hist_quantile(&y.hist, 0.99) as f64 / 1e3,
            split(x),
            split(y)
        )
    };
    for k in &keys {
        let label = format!("{:#x} {}", k.0, if k.1 { "out" } else { "in" });
        row(label, t.get(k).unwrap_or(&empty), q.get(k).unwrap_or(&empty));
    }
    row("**all IDE ports**".into(), &tt, &qt);
    println!(
        "\n{sectors} sectors, one WRITE SECTORS EXT each (plus one IDENTIFY and one FLUSH per run); IDE exits {} (tinyvmm) vs {} (QEMU); exit time on IDE ports {:.1} ms vs {:.1} ms (QEMU/tinyvmm {:.2}x).",
        tt.count,
        qt.count,
        tt.ns as f64 / 1e6,
        qt.ns as f64 / 1e6,
        qt.ns as f64 / tt.ns.max(1) as f64
    );
}
