//! Builds the bundled guest (vmm/guest, x86_64-unknown-none) twice, with and without frame
//! pointers, and hands their paths to `include_bytes!` through `TINYVMM_GUEST_ELF` and
//! `TINYVMM_GUEST_NOFP_ELF`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let guest = manifest.join("guest");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    for p in ["src", "Cargo.toml", "Cargo.lock", "link.ld", "build.rs", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", guest.join(p).display());
    }
    println!("cargo:rerun-if-changed={}", manifest.join("abi").display());
    // Two builds of one source, both shipped: with frame pointers (the default, `--guest-variant
    // fp`) and without, with unwind tables (`--guest-variant nofp`): the ground truth for
    // walking stacks by CFI, as on distribution kernels (ORC, no frame pointers).
    let variants: [(&str, &str, &[&str]); 2] = [
        ("TINYVMM_GUEST_ELF", "guest-target", &["-C", "force-frame-pointers=yes", "-C", "relocation-model=static"]),
        (
            "TINYVMM_GUEST_NOFP_ELF",
            "guest-target-nofp",
            &["-C", "force-frame-pointers=no", "-C", "force-unwind-tables=yes", "-C", "relocation-model=static"],
        ),
    ];
    for (env, dir, rustflags) in variants {
        let elf = build_guest(&guest, &out.join(dir), rustflags);
        println!("cargo:rustc-env={env}={}", elf.display());
    }
}

/// Builds the guest with `rustflags` in `target_dir`; returns the ELF's path.
fn build_guest(guest: &std::path::Path, target_dir: &std::path::Path, rustflags: &[&str]) -> PathBuf {
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
    let flags = rustflags.join("\x1f");
    let status = cmd
        .current_dir(guest)
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .args(["build", "--release", "--locked", "--target", "x86_64-unknown-none", "--target-dir"])
        .arg(target_dir)
        .arg("--manifest-path")
        .arg(guest.join("Cargo.toml"))
        .status()
        .expect("failed to run cargo for the bundled guest");
    if !status.success() {
        panic!("building the bundled guest failed (is the x86_64-unknown-none target installed? `rustup target add x86_64-unknown-none`)");
    }
    target_dir.join("x86_64-unknown-none/release/tinyvmm-guest")
}
