//! Builds the eBPF object (`profiler-ebpf`, nightly, bpfel-unknown-none) and hands its path to
//! the daemon, which embeds it.
//!
//! The object is cached outside the clone, in `$KVMPROF_CACHE/ebpf/<key>/` (default
//! `/var/cache/kvmprof`), keyed by a hash of the eBPF and shared sources, the nightly rustc and
//! bpf-linker versions: a fresh clone on a machine that built the same sources before does not
//! rebuild it. `scripts/setup.sh` installs nightly, rust-src and bpf-linker.
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

const HELP: &str = "run scripts/setup.sh first (it installs nightly, rust-src and bpf-linker)";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let ebpf_dir = root.join("profiler-ebpf");
    let common_dir = root.join("profiler-common");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let cache = env::var_os("KVMPROF_CACHE").map(PathBuf::from).unwrap_or_else(|| "/var/cache/kvmprof".into());

    let mut inputs = Vec::new();
    for dir in [&ebpf_dir, &common_dir] {
        println!("cargo:rerun-if-changed={}", dir.display());
        collect_sources(dir, &mut inputs);
    }
    println!("cargo:rerun-if-env-changed=KVMPROF_CACHE");
    inputs.sort();

    let path_env = path_with(&cache.join("bin"));
    let nightly = tool_version(Command::new("rustc").args(["+nightly", "--version"]).env("PATH", &path_env))
        .unwrap_or_else(|| fail(&format!("nightly rustc not found; {HELP}")));
    let linker = tool_version(Command::new("bpf-linker").arg("--version").env("PATH", &path_env))
        .unwrap_or_else(|| fail(&format!("bpf-linker not found in PATH or {}/bin; {HELP}", cache.display())));

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
    let dest = out_dir.join("profiler-ebpf.o");
    fs::copy(&cached, &dest).unwrap_or_else(|e| fail(&format!("copy {}: {e}", cached.display())));
    println!("cargo:rustc-env=KVMPROF_EBPF_KEY={key}");
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
