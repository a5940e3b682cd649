#!/usr/bin/env bash
# BENCHMARKS.md "Real guest kernels": index, KASLR slide search, ORC and CFI tables on
# Debian's 6.1.0-47-cloud-amd64 vmlinux (fetched and cached by scripts/debian-vmlinux.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
vmlinux=$(bash scripts/debian-vmlinux.sh)
cargo build --release -q -p symbolizer --example bench-real-kernel
bin="${CARGO_TARGET_DIR:-target}/release/examples/bench-real-kernel"
for i in 1 2 3; do echo "# round $i"; "$bin" "$vmlinux"; done
