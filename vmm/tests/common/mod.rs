//! Helpers shared by the integration tests: they run the real `tinyvmm` binary on KVM.
#![allow(dead_code)]

use serde_json::Value;
use vmm::abi::stats::RunStats;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const SECTOR: usize = 512;

/// KVM tests fail (never skip) without /dev/kvm.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: these tests need KVM (load kvm and run as root)"
    );
}

pub fn tinyvmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tinyvmm"))
}

pub struct Run {
    pub out: Output,
    pub stats: Option<Value>,
    /// The same file, parsed strictly into the typed document (every run checks it).
    pub typed: Option<RunStats>,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn stats(&self) -> &Value {
        self.stats.as_ref().expect("no stats JSON written")
    }
    pub fn typed(&self) -> &RunStats {
        self.typed.as_ref().expect("no stats JSON written")
    }
    pub fn guest(&self) -> &Value {
        &self.stats()["guest"]
    }
    pub fn port(&self, p: &str) -> u64 {
        self.stats()["by_port"][p].as_u64().unwrap_or(0)
    }
    pub fn assert_ok(&self) {
        assert_eq!(self.code(), 0, "tinyvmm failed: {}", self.stderr());
        assert!(!self.stderr().contains("panicked"), "{}", self.stderr());
    }
}

/// Runs tinyvmm with `args` plus `--stats-json` in `dir`.
pub fn run(dir: &Path, args: &[&str]) -> Run {
    require_kvm();
    let stats = dir.join(format!("stats-{}.json", std::process::id() as u64 ^ rand_tag()));
    let out = tinyvmm()
        .args(["run", "--quiet", "--stats-json"])
        .arg(&stats)
        .args(args)
        .output()
        .expect("cannot run tinyvmm");
    let text = std::fs::read_to_string(&stats).ok();
    let stats: Option<Value> = text.as_deref().map(|s| serde_json::from_str(s).expect("stats JSON"));
    // Every stats file must parse into the typed document (unknown fields are errors) and
    // write back to the same JSON: nothing written is undeclared, nothing declared is lost.
    let typed = text.as_deref().map(|s| {
        let t: RunStats = serde_json::from_str(s).unwrap_or_else(|e| panic!("stats JSON is not a RunStats: {e}\n{s}"));
        assert_eq!(serde_json::to_value(&t).unwrap(), *stats.as_ref().unwrap(), "RunStats round trip differs");
        t
    });
    Run { out, stats, typed }
}

fn rand_tag() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A zero-filled raw image of `sectors` sectors.
pub fn image(dir: &Path, name: &str, sectors: usize) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0u8; sectors * SECTOR]).expect("write image");
    p
}

/// The guest's disk-write pattern, recomputed independently: u64 word `i` of sector `lba`.
pub fn pattern_sector(lba: u64) -> Vec<u8> {
    (0..64u64)
        .flat_map(|i| {
            (lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i.wrapping_mul(0xd6e8_feb8_6659_fd93) ^ 0x6b76_6d70_726f_6600)
                .to_le_bytes()
        })
        .collect()
}

/// FNV-1a over little-endian u64 words: the guest's checksum.
pub fn checksum(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in bytes.chunks_exact(8) {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("0x{h:016x}")
}
