#!/bin/sh
# tinyvmm's time per port-I/O exit as a ratio to a bare KVM_RUN loop, in one run.
# Usage: vmm/scripts/bench-exit-cost.sh [EXITS] [ROUNDS]   (as root, needs /dev/kvm)
set -eu
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/target-vmm}"
cargo build -q -p vmm --release --example exit_cost
"$CARGO_TARGET_DIR/release/examples/exit_cost" "${1:-200000}" "${2:-7}"
