#!/usr/bin/env bash
# Guest slowdown under `kvmprof record`, as ratios measured in one run (BENCHMARKS.md).
#
# The guest is kvm-exit-loop: exactly N port writes (100 000 by default), each an exit to user
# space. Its own elapsed time around the KVM_RUN loop is the measure, so eBPF load/attach time is
# not counted. Rounds interleave the three modes so machine noise hits all of them alike.
#   usage: sudo scripts/bench-record-overhead.sh [EXITS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
exits=${1:-100000}
rounds=${2:-7}
bin=${CARGO_TARGET_DIR:-target}/release
cargo build --release -p profiler-daemon -p kvm-exit-loop --quiet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for r in $(seq "$rounds"); do
  "$bin/kvm-exit-loop" --outs "$exits" >>"$tmp/plain.jsonl"
  "$bin/kvmprof" record -o "$tmp/agg.kvmprof" -- "$bin/kvm-exit-loop" --outs "$exits" 2>/dev/null >>"$tmp/agg.jsonl"
  "$bin/kvmprof" record --records -o "$tmp/rec.kvmprof" -- "$bin/kvm-exit-loop" --outs "$exits" 2>/dev/null >>"$tmp/rec.jsonl"
  echo "round $r/$rounds done" >&2
done
python3 - "$tmp" "$exits" "$rounds" <<'PY'
import json, statistics, sys
tmp, exits, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def load(name):
    return [json.loads(l)["stats"] for l in open(f"{tmp}/{name}.jsonl")]
plain, agg, rec = load("plain"), load("agg"), load("rec")
for runs in (plain, agg, rec):
    assert all(r["outs"] == exits for r in runs), "the guest did not make exactly the requested exits"
med = lambda runs: statistics.median(r["elapsed_ns"] for r in runs)
base = med(plain)
# Per-round ratios (same round = same machine conditions), then their median.
ratio = lambda runs: statistics.median(b["elapsed_ns"] / a["elapsed_ns"] for a, b in zip(plain, runs))
print(f"| mode | median guest time ({exits} exits) | per exit | slowdown (median of per-round ratios) |")
print("|---|---|---|---|")
print(f"| no profiler | {base/1e9:.3f} s | {base/exits/1e3:.2f} us | 1.000 |")
print(f"| record (aggregate only) | {med(agg)/1e9:.3f} s | {med(agg)/exits/1e3:.2f} us | {ratio(agg):.3f} |")
print(f"| record --records | {med(rec)/1e9:.3f} s | {med(rec)/exits/1e3:.2f} us | {ratio(rec):.3f} |")
print(f"\n{rounds} rounds, interleaved.")
PY
