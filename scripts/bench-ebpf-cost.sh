#!/usr/bin/env bash
# eBPF run time per exit of kvmprof's programs, from the kernel's own bpf_stats, for one or more
# kvmprof binaries in interleaved rounds (so machine noise hits them alike): BENCHMARKS.md.
#
# Each round and binary: an exit-bound calibration guest (kvm-exit-loop, one `out` per loop,
# every one an exit to user space) runs; `kvmprof record --pid` follows it for 3 s; at 2.5 s the
# programs' run_time_ns / run_cnt are read with bpftool. Every exit fires `kvm_pio` exactly
# once, so ns per exit = the programs' total run time / kvm_pio's run count.
#   usage: sudo scripts/bench-ebpf-cost.sh [ROUNDS] [KVMPROF...]   (default: 5, target/release/kvmprof)
#   EXIT_LOOP_ARGS="--long-mode" appends those arguments to every kvm-exit-loop run (default: none,
#   real mode; --long-mode runs the same loop as a 64-bit guest, whose exits need no CS base read).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bpf-stats.sh
rounds=${1:-5}
shift || true
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=("${CARGO_TARGET_DIR:-target}/release/kvmprof")
loop=${CARGO_TARGET_DIR:-target}/release/kvm-exit-loop
read -ra loop_args <<<"${EXIT_LOOP_ARGS:-}"
[ -x "$loop" ] || cargo build --release -p kvm-exit-loop --quiet
tmp=$(mktemp -d)
trap 'bpf_stats_restore; rm -rf "$tmp"' EXIT
bpf_stats_on
for r in $(seq "$rounds"); do
  for i in "${!bins[@]}"; do
    "$loop" --outs 100000000 "${loop_args[@]}" >/dev/null &
    guest=$!
    sleep 0.3
    "${bins[$i]}" record -o "$tmp/r.kvmprof" --pid "$guest" --duration 3 2>/dev/null &
    rec=$!
    sleep 2.5
    bpftool -j prog show >"$tmp/round-$r-bin-$i.json"
    # Only this recorder's programs (others may be loaded with the same names).
    bpf_prog_ids "$rec" >"$tmp/ids-$r-$i"
    wait "$rec"
    kill "$guest"; wait "$guest" 2>/dev/null || true
  done
  echo "round $r/$rounds done" >&2
done
python3 - "$tmp" "$rounds" "${bins[@]}" <<'PY'
import json, os, statistics, sys
tmp, rounds, bins = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
names = set(os.environ["KVMPROF_PROGS"].split())
print("| kvmprof | kvm_pio ns/run | kvm_userspace_exit ns/run | kvm_fpu ns/run (2 per exit) | cpu_switch ns per exit | eBPF ns per exit (median of rounds) |")
print("|---|---:|---:|---:|---:|---:|")
for i, b in enumerate(bins):
    per_exit, per_run, switch = [], {n: [] for n in names}, []
    for r in range(1, rounds + 1):
        ids = {int(l) for l in open(f"{tmp}/ids-{r}-{i}") if l.strip()}
        progs = [p for p in json.load(open(f"{tmp}/round-{r}-bin-{i}.json")) if p.get("name") in names and p.get("run_cnt") and p["id"] in ids]
        exits = sum(p["run_cnt"] for p in progs if p["name"] == "kvm_pio")
        per_exit.append(sum(p["run_time_ns"] for p in progs) / exits)
        # sched_switch fires for every task on the machine, not per exit: its share per exit.
        switch.append(sum(p["run_time_ns"] for p in progs if p["name"] == "cpu_switch") / exits)
        for p in progs:
            per_run[p["name"]].append(p["run_time_ns"] / p["run_cnt"])
    med = lambda v: f"{statistics.median(v):.0f}" if v else "-"
    print(f"| `{b}` | {med(per_run['kvm_pio'])} | {med(per_run['kvm_userspace_e'])} | {med(per_run['kvm_fpu'])} | {med(switch) if any(switch) else '-'} | {med(per_exit)} |")
print(f"\n{rounds} rounds, interleaved; bpf_stats counts include its own two clock reads per run.")
PY
