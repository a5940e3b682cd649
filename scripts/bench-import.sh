#!/usr/bin/env bash
# `kvmprof import` throughput and peak RSS on generated real-format hw text (BENCHMARKS.md):
# ftrace and perf-script, SIZES exits each (default 1 M and 4 M). Each exit is a VMX kvm_exit
# line, a kvm_pio or kvm_mmio line for 80% of them, and a kvm_entry line, on two vCPU threads
# (examples/gen_hw_trace.rs). The input is read from the page cache (one untimed read first).
# Wall time is reported with the CPU time (user + sys) the import used: on a shared machine the
# wall time includes waiting for a core, the CPU time does not.
# BASELINE=path also imports every input with that kvmprof binary (e.g. a build of an older
# commit), right after this build's run, so the two rows of an input share the conditions.
#   usage: [BASELINE=kvmprof-old] scripts/bench-import.sh [EXITS...]
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000000 4000000)
bin=${CARGO_TARGET_DIR:-target}/release
cargo build --release -p profiler-daemon --bin kvmprof --example gen_hw_trace --quiet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# One import of $tmp/in.txt by binary $1, as one table row labelled $2.
row() {
  /usr/bin/time -f "%e %U %S %M" -o "$tmp/time" "$1" import "$fmt" "$tmp/in.txt" -o "$tmp/out.kvmprof" 2>"$tmp/err" || { cat "$tmp/err" "$tmp/time" >&2; exit 1; }
  read -r wall user sys kib <"$tmp/time"
  grep -q "imported $n exits" "$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
  lines=$(sed -n 's/.* in \([0-9]*\) lines.*/\1/p' "$tmp/err")
  python3 -c "
n, wall, cpu, kib, size, lines = $n, $wall, $user + $sys, $kib, $(stat -c %s "$tmp/in.txt"), $lines
print(f'| $2 | {n:,} | {size/2**20:.0f} MiB | {lines:,} | {wall:.2f} | {cpu:.2f} | {n/wall/1e6:.2f} M | {n/cpu/1e6:.2f} M | {kib/1024:.1f} MiB |')"
  rm -f "$tmp/out.kvmprof" "$tmp/out.kvmprof.records"
}
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
echo
echo "| format | exits | input | lines | wall (s) | CPU user+sys (s) | exits/s (wall) | exits/s (CPU) | peak RSS |"
echo "|---|---|---|---|---|---|---|---|---|"
for fmt in ftrace perf-script; do
  for n in "${sizes[@]}"; do
    "$bin/examples/gen_hw_trace" "$fmt" "$n" "$tmp/in.txt"
    cat "$tmp/in.txt" >/dev/null
    row "$bin/kvmprof" "$fmt"
    [ -z "${BASELINE:-}" ] || row "$BASELINE" "$fmt (baseline)"
    rm -f "$tmp/in.txt"
  done
done
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
