#!/usr/bin/env bash
# eBPF run time per exit with guest stack walking (`record --stack-depth`), from the kernel's own
# bpf_stats: BENCHMARKS.md "Guest stacks". One run, interleaved rounds (machine noise hits every
# configuration alike), the same guest workload in each: tinyvmm's disk-write (256 `out` to the
# IDE data port per sector from ide_output_data, 4+ frames deep), in both guest builds:
#   fp   depth 1   the caller at [RBP+8] (the default)
#   fp   depth 4   frame pointers only (the fp build's .eh_frame has no rules)
#   nofp depth 1   the default on the no-frame-pointer build (its callers are wrong: no RBP chain)
#   nofp depth 4   the .eh_frame unwind table (152 rules), binary search per frame
# The guest is stopped (SIGSTOP) while kvmprof attaches; when kvmprof says it records, bpftool
# reads the programs' run_time_ns / run_cnt, the guest runs 3 s, is stopped again (no more
# exits) and bpftool reads them again. The recording (`kvmprof report --format json`,
# total_exits) then holds exactly the guest's exits of that window: ns per exit = all programs'
# run time between the two samples / the recorded exits.
# The programs run for every KVM thread on the host (the PID filter is inside them): rounds in
# which other VMs ran them too are left out when there are clean ones (the table says).
#   usage: sudo scripts/bench-stack-cost.sh [ROUNDS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bpf-stats.sh
rounds=${1:-3}
bin=${CARGO_TARGET_DIR:-target}/release
tmp=$(mktemp -d)
vm= rec= stats=
# Each step may fail (a process already gone) without ending the trap before the clean-up.
trap 'bpf_stats_restore; [ -z "$stats" ] || kill "$stats" 2>/dev/null || true
      [ -z "$rec" ] || kill "$rec" 2>/dev/null || true
      [ -z "$vm" ] || { kill -KILL "$vm" 2>/dev/null || true; }; rm -rf "$tmp"' EXIT
# Waits until the file $1 has "$2" in it (any content when "$2" is empty), while process $3 lives.
wait_for() {
  until if [ -z "$2" ]; then [ -s "$1" ]; else grep -q "$2" "$1" 2>/dev/null; fi; do
    kill -0 "$3" 2>/dev/null || { echo "bench-stack-cost: process $3 ended before $1 had ${2:-content}" >&2; exit 1; }
    sleep 0.05
  done
}
for v in fp nofp; do "$bin/tinyvmm" guest-elf --guest-variant "$v" -o "$tmp/$v.elf"; done
truncate -s 64M "$tmp/disk.img"
configs=("fp 1" "fp 4" "nofp 1" "nofp 4")
bpf_stats_on
# Other benchmarks on the host put kernel.bpf_stats_enabled back to 0 when they end: this process
# keeps run-time stats on until it is killed (bpf(2) BPF_ENABLE_STATS = 32, BPF_STATS_RUN_TIME = 0,
# x86_64 SYS_bpf = 321; the kernel counts while the returned fd is open), as bench-peers.sh does.
python3 -c '
import ctypes, signal, sys
attr = (ctypes.c_uint32 * 4)()
fd = ctypes.CDLL(None, use_errno=True).syscall(321, 32, ctypes.byref(attr), ctypes.sizeof(attr))
if fd < 0:
    sys.exit(f"bench-stack-cost: BPF_ENABLE_STATS failed (errno {ctypes.get_errno()})")
print("on", flush=True)
signal.pause()' >"$tmp/stats" &
stats=$!
wait_for "$tmp/stats" "on" "$stats"
for r in $(seq "$rounds"); do
  for i in "${!configs[@]}"; do
    read -r variant depth <<<"${configs[$i]}"
    "$bin/tinyvmm" run --guest-variant "$variant" --workload disk-write --count 100000 --disk "$tmp/disk.img" \
      --skip-pmtmr-calibration --quiet --memory-map "$tmp/map.json" >/dev/null 2>&1 &
    vm=$!
    wait_for "$tmp/map.json" "" "$vm"
    # The guest is stopped while kvmprof attaches: its programs' stats at the first sample hold
    # only the runs before the recording's counted window opened (kvm_pio is attached first),
    # and after the second sample it makes no more exits. So the window between the samples
    # holds exactly the exits the recording counts.
    kill -STOP "$vm"
    "$bin/kvmprof" record -o "$tmp/r-$r-$i.kvmprof" --pid "$vm" --guest-memory-map "$tmp/map.json" --duration 5 \
      --stack-depth "$depth" --vmlinux "$tmp/$variant.elf" 2>"$tmp/err" &
    rec=$!
    wait_for "$tmp/err" "recording" "$rec"
    bpf_prog_ids "$rec" >"$tmp/ids-$r-$i" || true
    bpftool -j prog show >"$tmp/progs-$r-$i-1.json" || true
    kill -CONT "$vm"
    sleep 3
    kill -STOP "$vm"
    sleep 0.2  # the vCPU thread leaves KVM_RUN for the signal: that last exit is traced too
    # --duration counts from when the first program is attached: still recording 3.2 s later?
    kill -0 "$rec" 2>/dev/null || echo "round $r: kvmprof stopped recording before the second sample" >&2
    bpftool -j prog show >"$tmp/progs-$r-$i-2.json" || true
    if wait "$rec"; then
      "$bin/kvmprof" report "$tmp/r-$r-$i.kvmprof" --format json >"$tmp/report-$r-$i.json" || true
    else
      echo "round $r: kvmprof record failed: $(tail -1 "$tmp/err")" >&2
    fi
    rec=
    kill -KILL "$vm"; wait "$vm" 2>/dev/null || true
    vm=
    rm -f "$tmp/map.json" "$tmp/r-$r-$i.kvmprof"
  done
  echo "round $r/$rounds done" >&2
done
python3 - "$tmp" "$rounds" "${configs[@]}" <<'PY'
import json, os, statistics, sys
tmp, rounds, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
names = set(os.environ["KVMPROF_PROGS"].split())
print("| guest build | --stack-depth | kvm_pio ns/run | kvm_pio runs in the window | this guest's exits recorded in it | eBPF ns per exit of this guest (median of rounds) |")
print("|---|---:|---:|---:|---:|---:|")
notes, empty = [], []
for i, c in enumerate(configs):
    rows = []  # (ns per exit, kvm_pio ns per run, kvm_pio runs, this guest's exits, clean)
    for r in range(1, rounds + 1):
        try:
            ids = {int(l) for l in open(f"{tmp}/ids-{r}-{i}") if l.strip()}
            samples = []
            for k in (1, 2):
                progs = [p for p in json.load(open(f"{tmp}/progs-{r}-{i}-{k}.json")) if p.get("name") in names and p["id"] in ids]
                samples.append((sum(p.get("run_time_ns", 0) for p in progs),
                                sum(p.get("run_time_ns", 0) for p in progs if p["name"] == "kvm_pio"),
                                sum(p.get("run_cnt", 0) for p in progs if p["name"] == "kvm_pio")))
            own = json.load(open(f"{tmp}/report-{r}-{i}.json"))["total_exits"]
        except (OSError, ValueError, TypeError, KeyError):
            continue  # a sample is missing: the round is left out
        (t1, p1, n1), (t2, p2, n2) = samples
        total, pio_ns, runs = t2 - t1, p2 - p1, n2 - n1
        if own <= 0 or runs <= 0:
            continue
        # Clean: as many kvm_pio runs as this guest's exits (within 1 %).
        rows.append((total / own, pio_ns / runs, runs, own, abs(runs - own) <= 0.01 * own))
    # Rounds in which another VM ran the programs too (more kvm_pio runs than this guest's
    # exits: their filtered runs add to the time) are left out when there are clean ones.
    keep = [x for x in rows if x[4]] or rows
    med = lambda k: statistics.median(x[k] for x in keep) if keep else float("nan")
    v, d = c.split()
    if not keep:
        empty.append(f"{v} depth {d}")
    print(f"| {v} | {d} | {med(1):.0f} | {med(2):.0f} | {med(3):.0f} | {med(0):.0f} |")
    notes.append(f"{v} depth {d}: {len(keep)} of {rounds} rounds kept ({sum(x[4] for x in rows)} clean); ns per exit by round: {[round(x[0]) for x in keep]}")
print(f"\n{rounds} rounds, interleaved; bpf_stats counts include its own two clock reads per run.")
print("\n".join(notes))
if empty:
    sys.exit(f"bench-stack-cost: no round gave numbers for {', '.join(empty)} (kvmprof's errors are printed above)")
PY
