#!/usr/bin/env bash
# Peak RSS of `kvmprof record --records` over a short and a 10x longer guest (BENCHMARKS.md):
# records stream to FILE.records as they arrive, so the daemon's memory must not grow with
# the recording's length.
#
# The guest is kvm-exit-loop making N port writes as fast as it can (each an exit). The short
# run already wraps the 16 MiB records ring buffer (233 016 records of 72 bytes), so both runs
# have touched all of it. Peak RSS is the kernel's VmHWM of the kvmprof process (not of the
# guest), read every 100 ms until it exits. Rounds alternate short and long.
#   usage: sudo scripts/bench-records-rss.sh [SHORT_EXITS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
short=${1:-300000}
rounds=${2:-2}
long=$((short * 10))
bin=${CARGO_TARGET_DIR:-target}/release
cargo build --release -p profiler-daemon -p kvm-exit-loop --quiet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Runs one recording; prints "exits records dropped peak_kib seconds stream_bytes".
one() {
  local n=$1 out="$tmp/r$1.kvmprof" hwm=0 t0 t1
  t0=$(date +%s.%N)
  "$bin/kvmprof" record --records -o "$out" -- "$bin/kvm-exit-loop" --outs "$n" >/dev/null 2>"$tmp/err" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$v" ] && hwm=$v
    sleep 0.1
  done
  wait "$pid" || { cat "$tmp/err" >&2; exit 1; }
  t1=$(date +%s.%N)
  "$bin/kvmprof" report "$out" --format json >"$tmp/rep.json"
  python3 - "$tmp/rep.json" "$n" "$hwm" "$t0" "$t1" "$(stat -c %s "$out.records")" <<'PY'
import json, sys
rep, n, hwm, t0, t1, size = json.load(open(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
r = rep["records"]
assert rep["total_exits"] == n + 1, rep["total_exits"]
print(rep["total_exits"], r["kept"], r["dropped"], hwm, f"{t1 - t0:.1f}", size)
PY
}

for r in $(seq "$rounds"); do
  echo "short $(one "$short")" >>"$tmp/results"
  echo "long $(one "$long")" >>"$tmp/results"
  echo "round $r/$rounds done" >&2
done
python3 - "$tmp/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print("| guest | exits | records kept | dropped | record stream | wall (s) | kvmprof peak RSS (VmHWM) |")
print("|---|---|---|---|---|---|---|")
for kind, exits, kept, dropped, hwm, secs, size in rows:
    print(f"| {kind} | {exits} | {kept} | {dropped} | {int(size)/2**20:.1f} MiB | {secs} | {int(hwm)/1024:.1f} MiB |")
med = lambda k: statistics.median(int(r[4]) for r in rows if r[0] == k)
s, l = med("short"), med("long")
print(f"\nmedian peak RSS: short {s/1024:.1f} MiB, long (10x the exits) {l/1024:.1f} MiB: {100*(l-s)/s:+.1f}%")
PY
