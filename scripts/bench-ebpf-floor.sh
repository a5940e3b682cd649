#!/usr/bin/env bash
# What the building blocks of an exit tracer cost per program run on this host, by bpf_stats:
# an (almost) empty bpftrace program on kvm:kvm_fpu (the fixed cost of running any program),
# a count into a map without a key, and a count keyed by thread id (a hash lookup + update).
# kvm_fpu fires twice per exit of kvm-exit-loop. BENCHMARKS.md, "Peer benchmark".
#   usage: sudo scripts/bench-ebpf-floor.sh [OUTS]    (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bpf-stats.sh
outs=${1:-100000}
loop=${CARGO_TARGET_DIR:-target}/release/kvm-exit-loop
[ -x "$loop" ] || cargo build --release -p kvm-exit-loop --quiet
trap bpf_stats_restore EXIT
bpf_stats_on
echo "| bpftrace program | runs | ns per run |"
echo "|---|---:|---:|"
for prog in 'tracepoint:kvm:kvm_fpu { $x = 1; }' 'tracepoint:kvm:kvm_fpu { @ = count(); }' 'tracepoint:kvm:kvm_fpu { @[tid] = count(); }'; do
  bpftrace -e "$prog" >/dev/null 2>&1 &
  bt=$!
  sleep 3
  "$loop" --outs "$outs" >/dev/null
  for id in $(bpf_prog_ids "$bt"); do
    bpftool -j prog show id "$id" | PROG="$prog" python3 -c 'import json, os, sys; p = json.load(sys.stdin); print("| `%s` | %d | %.0f |" % (os.environ["PROG"], p["run_cnt"], p["run_time_ns"] / p["run_cnt"]))'
  done
  kill -INT $bt; wait $bt || true
done
