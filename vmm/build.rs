//! Builds the bundled guest (vmm/guest, x86_64-unknown-none) and hands its path to
//! `include_bytes!` through `TINYVMM_GUEST_ELF`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let guest = manifest.join("guest");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out.join("guest-target");
    for p in ["src", "Cargo.toml", "Cargo.lock", "link.ld", "build.rs", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", guest.join(p).display());
    }
    println!("cargo:rerun-if-changed={}", manifest.join("abi").display());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // The outer build's flags and target would leak into the guest build: strip them.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_FEATURE_") || k.starts_with("CARGO_CFG_") || k.starts_with("DEP_") {
            cmd.env_remove(k);
        }
    }
    let flags = ["-C", "force-frame-pointers=yes", "-C", "relocation-model=static"].join("\x1f");
    let status = cmd
        .current_dir(&guest)
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .args(["build", "--release", "--locked", "--target", "x86_64-unknown-none", "--target-dir"])
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(guest.join("Cargo.toml"))
        .status()
        .expect("failed to run cargo for the bundled guest");
    if !status.success() {
        panic!("building the bundled guest failed (is the x86_64-unknown-none target installed? `rustup target add x86_64-unknown-none`)");
    }
    let elf = target_dir.join("x86_64-unknown-none/release/tinyvmm-guest");
    println!("cargo:rustc-env=TINYVMM_GUEST_ELF={}", elf.display());
}
