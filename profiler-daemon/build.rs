//! Builds the eBPF object (`profiler-ebpf`, nightly, bpfel-unknown-none) and hands its path to
//! the daemon, which embeds it.
//!
//! The object is cached outside the clone, in `$KVMPROF_CACHE/ebpf/<key>/` (default
//! `/var/cache/kvmprof`), keyed by a hash of the eBPF and shared sources, the nightly rustc and
//! bpf-linker versions: a fresh clone on a machine that built the same sources before does not
//! rebuild it. `scripts/setup.sh` installs nightly, rust-src and bpf-linker.
//!
//! `KVMPROF_SKIP_EBPF=1` (as in aya's template) skips all of that and embeds an empty object,
//! so `cargo check`/`clippy`/`doc` and the pure unit tests build where nightly or bpf-linker
//! are missing. `KVMPROF_EBPF_BUILT` (1 or 0) tells the daemon which it got, so that a
//! skipped build refuses to record instead of failing on an empty object.
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

const HELP: &str = "run scripts/setup.sh first (it installs nightly, rust-src and bpf-linker)";
const SKIP_HINT: &str = "or set KVMPROF_SKIP_EBPF=1 to build user space without the eBPF programs (check, clippy, unit tests)";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let ebpf_dir = root.join("profiler-ebpf");
    let common_dir = root.join("profiler-common");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let cache = env::var_os("KVMPROF_CACHE").map(PathBuf::from).unwrap_or_else(|| "/var/cache/kvmprof".into());
    let dest = out_dir.join("profiler-ebpf.o");

    println!("cargo:rerun-if-env-changed=KVMPROF_SKIP_EBPF");
    if env::var_os("KVMPROF_SKIP_EBPF").is_some_and(|v| v == "1") {
        // Only the variable is watched now: unsetting it reruns this script; eBPF source
        // changes do not matter until then.
        fs::write(&dest, []).unwrap_or_else(|e| fail(&format!("write {}: {e}", dest.display())));
        println!("cargo:rustc-env=KVMPROF_EBPF_BUILT=0");
        println!("cargo:rustc-env=KVMPROF_EBPF_KEY=skipped");
        println!("cargo:warning=KVMPROF_SKIP_EBPF=1: built without the eBPF programs; this kvmprof cannot record");
        return;
    }

    let mut inputs = Vec::new();
    for dir in [&ebpf_dir, &common_dir] {
        println!("cargo:rerun-if-changed={}", dir.display());
        collect_sources(dir, &mut inputs);
    }
    println!("cargo:rerun-if-env-changed=KVMPROF_CACHE");
    inputs.sort();

    let path_env = path_with(&cache.join("bin"));
    let nightly = tool_version(Command::new("rustc").args(["+nightly", "--version"]).env("PATH", &path_env))
        .unwrap_or_else(|| fail(&format!("nightly rustc not found; {HELP}, {SKIP_HINT}")));
    let linker = tool_version(Command::new("bpf-linker").arg("--version").env("PATH", &path_env))
        .unwrap_or_else(|| fail(&format!("bpf-linker not found in PATH or {}/bin; {HELP}, {SKIP_HINT}", cache.display())));

    let mut h = DefaultHasher::new();
    nightly.hash(&mut h);
    linker.hash(&mut h);
    for f in &inputs {
        f.strip_prefix(&root).unwrap_or(f).hash(&mut h);
        fs::read(f).unwrap_or_default().hash(&mut h);
    }
    let key = format!("{:016x}", h.finish());

    // Fall back to OUT_DIR when the shared cache is not writable (a non-root build).
    let cache_dir = if fs::create_dir_all(cache.join("ebpf")).is_ok() { cache.join("ebpf") } else { out_dir.join("ebpf-cache") };
    let cached = cache_dir.join(&key).join("profiler-ebpf.o");
    if !cached.exists() {
        let target_dir = cache_dir.join("target");
        let status = Command::new("cargo")
            .args(["+nightly", "build", "-Z", "build-std=core", "--target", "bpfel-unknown-none", "--release"])
            .arg("--manifest-path")
            .arg(ebpf_dir.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .env("PATH", &path_env)
            // The outer build's settings are for the host, not for BPF.
            .env_remove("RUSTC")
            .env_remove("RUSTC_WRAPPER")
            // `cargo clippy` runs every workspace crate through its stable clippy-driver.
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CLIPPY_ARGS")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTUP_TOOLCHAIN")
            .status()
            .unwrap_or_else(|e| fail(&format!("cannot run cargo for the eBPF build: {e}")));
        if !status.success() {
            fail(&format!("building profiler-ebpf failed (see above); {HELP}"));
        }
        let built = target_dir.join("bpfel-unknown-none/release/profiler-ebpf");
        fs::create_dir_all(cached.parent().unwrap()).unwrap();
        // Copy then rename, so a concurrent build never sees half a file.
        let tmp = cached.with_extension("tmp");
        fs::copy(&built, &tmp).unwrap_or_else(|e| fail(&format!("copy {}: {e}", built.display())));
        fs::rename(&tmp, &cached).unwrap();
    }
    fs::copy(&cached, &dest).unwrap_or_else(|e| fail(&format!("copy {}: {e}", cached.display())));
    println!("cargo:rustc-env=KVMPROF_EBPF_KEY={key}");
    println!("cargo:rustc-env=KVMPROF_EBPF_BUILT=1");
}

fn collect_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            collect_sources(&p, out);
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("rs" | "toml" | "lock")) {
            out.push(p);
        }
    }
}

fn path_with(extra: &Path) -> String {
    let mut p = extra.display().to_string();
    if let Ok(old) = env::var("PATH") {
        p.push(':');
        p.push_str(&old);
    }
    p
}

fn tool_version(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1)
}
