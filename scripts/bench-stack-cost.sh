#!/usr/bin/env bash
# eBPF run time per exit with guest stack walking (`record --stack-depth`), from the kernel's own
# bpf_stats: BENCHMARKS.md "Guest stacks". One run, interleaved rounds (machine noise hits every
# configuration alike), the same guest workload in each: tinyvmm's disk-write (256 `out` to the
# IDE data port per sector from ide_output_data, 4+ frames deep), in both guest builds:
#   fp   depth 1   the caller at [RBP+8] (the default)
#   fp   depth 4   frame pointers only (the fp build's .eh_frame has no rules)
#   nofp depth 1   the default on the no-frame-pointer build (its callers are wrong: no RBP chain)
#   nofp depth 4   the .eh_frame unwind table (152 rules), binary search per frame
# At 1 s and 3 s into each recording the programs' run_time_ns / run_cnt are read with bpftool,
# and the guest's exits so far from the recorder's EXITS map: ns per exit = all programs' run time
# in the window / the guest's exits in it.
# The programs run for every KVM thread on the host (the PID filter is inside them): rounds in
# which other VMs ran them too are left out when there are clean ones (the table says).
#   usage: sudo scripts/bench-stack-cost.sh [ROUNDS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bpf-stats.sh
rounds=${1:-3}
bin=${CARGO_TARGET_DIR:-target}/release
tmp=$(mktemp -d)
vm=
trap 'bpf_stats_restore; [ -n "$vm" ] && kill "$vm" 2>/dev/null; rm -rf "$tmp"' EXIT
for v in fp nofp; do "$bin/tinyvmm" guest-elf --guest-variant "$v" -o "$tmp/$v.elf"; done
truncate -s 64M "$tmp/disk.img"
configs=("fp 1" "fp 4" "nofp 1" "nofp 4")
bpf_stats_on
for r in $(seq "$rounds"); do
  for i in "${!configs[@]}"; do
    read -r variant depth <<<"${configs[$i]}"
    "$bin/tinyvmm" run --guest-variant "$variant" --workload disk-write --count 100000 --disk "$tmp/disk.img" \
      --skip-pmtmr-calibration --quiet --memory-map "$tmp/map.json" >/dev/null 2>&1 &
    vm=$!
    until [ -s "$tmp/map.json" ]; do sleep 0.05; done
    "$bin/kvmprof" record -o "$tmp/r.kvmprof" --pid "$vm" --guest-memory-map "$tmp/map.json" --duration 5 \
      --stack-depth "$depth" --vmlinux "$tmp/$variant.elf" 2>"$tmp/err" &
    rec=$!
    # --duration counts from when the programs are attached (the verifier takes longer with
    # the stack walker): the samples are timed from when kvmprof says it records.
    until grep -q "recording" "$tmp/err"; do sleep 0.05; done
    bpf_prog_ids "$rec" >"$tmp/ids-$r-$i" || true
    exits_map=
    for m in $(grep -h '^map_id:' /proc/"$rec"/fdinfo/* 2>/dev/null | awk '{print $2}' | sort -u); do
      if bpftool -j map show id "$m" 2>/dev/null | grep -q '"name":"EXITS"'; then exits_map=$m; fi
    done
    # Two samples, 1 s and 3 s in: the programs' stats and this guest's exits (the recorder's
    # EXITS map, summed); the cost is computed over the window between them.
    for s in 1 2; do
      sleep $((s == 1 ? 1 : 2))
      bpftool -j prog show >"$tmp/round-$r-$i-$s.json" || true
      [ -n "$exits_map" ] && bpftool -j map dump id "$exits_map" >"$tmp/exits-map-$r-$i-$s.json" || true
    done
    wait "$rec" || echo "round $r: kvmprof record failed: $(tail -1 "$tmp/err")" >&2
    kill "$vm"; wait "$vm" 2>/dev/null || true
    rm -f "$tmp/map.json"
  done
  echo "round $r/$rounds done" >&2
done
python3 - "$tmp" "$rounds" "${configs[@]}" <<'PY'
import json, os, statistics, sys
tmp, rounds, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
names = set(os.environ["KVMPROF_PROGS"].split())
print("| guest build | --stack-depth | kvm_pio ns/run | kvm_pio runs in the 2 s window | this guest's exits in it | eBPF ns per exit of this guest (median of rounds) |")
print("|---|---:|---:|---:|---:|---:|")
notes = []
for i, c in enumerate(configs):
    rows = []  # (ns per exit, kvm_pio ns per run, kvm_pio runs, this guest's exits, clean)
    for r in range(1, rounds + 1):
        try:
            ids = {int(l) for l in open(f"{tmp}/ids-{r}-{i}") if l.strip()}
            samples = []
            for s in (1, 2):
                progs = [p for p in json.load(open(f"{tmp}/round-{r}-{i}-{s}.json")) if p.get("name") in names and p["id"] in ids]
                own = sum(int.from_bytes(bytes(int(b, 16) for b in v["value"][:8]), "little")
                          for e in json.load(open(f"{tmp}/exits-map-{r}-{i}-{s}.json")) for v in e.get("values", []))
                samples.append((sum(p.get("run_time_ns", 0) for p in progs),
                                sum(p.get("run_time_ns", 0) for p in progs if p["name"] == "kvm_pio"),
                                sum(p.get("run_cnt", 0) for p in progs if p["name"] == "kvm_pio"), own))
        except (OSError, ValueError, TypeError):
            continue  # a sample is missing: the round is left out
        (t1, p1, n1, o1), (t2, p2, n2, o2) = samples
        runs, own = n2 - n1, o2 - o1
        if own <= 0 or runs <= 0:
            continue
        # Clean: as many kvm_pio runs as this guest's exits in the window (within 1 %).
        rows.append(((t2 - t1) / own, (p2 - p1) / runs, runs, own, abs(runs - own) <= 0.01 * own))
    # Rounds in which another VM ran the programs too (more kvm_pio runs than this guest's
    # exits: their filtered runs add to the time) are left out when there are clean ones.
    keep = [x for x in rows if x[4]] or rows
    med = lambda k: statistics.median(x[k] for x in keep) if keep else float("nan")
    v, d = c.split()
    print(f"| {v} | {d} | {med(1):.0f} | {med(2):.0f} | {med(3):.0f} | {med(0):.0f} |")
    notes.append(f"{v} depth {d}: {len(keep)} of {rounds} rounds kept ({sum(x[4] for x in rows)} clean); ns per exit by round: {[round(x[0]) for x in keep]}")
print(f"\n{rounds} rounds, interleaved; bpf_stats counts include its own two clock reads per run.")
print("\n".join(notes))
PY
