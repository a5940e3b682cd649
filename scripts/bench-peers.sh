#!/usr/bin/env bash
# kvmprof against its peers on one exit-bound guest (issue 11): BENCHMARKS.md, "Peer benchmark".
#
# The guest: kvm-exit-loop, real mode, OUTS × `out dx, al` in a 3-instruction loop, every one an
# exit to user space, then a pause (`in` from a port the VMM answers only when told to go on).
# Each round runs it once per mode, the modes in a rotated order (interleaved rounds, so machine
# noise hits them alike):
#   none        no tracer
#   bpftrace    count-only, the floor of any eBPF exit tool, for the guest's process as kvmprof --pid:
#               tracepoint:kvm:kvm_pio /pid == GUEST/ { @[args->port] = count(); }
#   perf        perf record -e kvm:kvm_pio,kvm:kvm_userspace_exit -p GUEST (every event to a file)
#   kvmprof     kvmprof record --pid GUEST (in-kernel aggregation)
#   records     kvmprof record --pid GUEST --records (also every exit through the ring buffer)
# The tracer attaches while the guest waits before its first instruction; the guest's wall-clock
# time is from "go" to "paused" (OUTS exits). At the pause, still attached, the tracer's programs
# (only its own: prog ids from /proc/PID/fdinfo) are read with `bpftool prog show`: eBPF ns per
# exit = their run_time_ns summed / OUTS (kernel.bpf_stats_enabled=1). Then the guest halts and
# the exact counts are checked: bpftrace's map and kvmprof's recording must hold OUTS port writes.
#   usage: sudo scripts/bench-peers.sh [ROUNDS] [OUTS]     (default: 5 rounds, 200000 outs)
#   MODES="bpftrace kvmprof" runs only those modes (the tables need "none" and "bpftrace" for their
#   slowdown and ratio columns); KVMPROF=PATH picks the kvmprof binary; KVMPROF_BEFORE=PATH adds
#   a mode "before": another kvmprof build in the same rounds (before/after a change).
#   EXIT_LOOP_ARGS="--long-mode" appends those arguments to every kvm-exit-loop run (default: none,
#   real mode; --long-mode runs the same loop as a 64-bit guest, whose exits need no CS base read).
# Needs root, KVM, bpftrace, perf, bpftool (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/bpf-stats.sh
rounds=${1:-5}
outs=${2:-200000}
target=${CARGO_TARGET_DIR:-target}
export KVMPROF=${KVMPROF:-$target/release/kvmprof} LOOP=$target/release/kvm-exit-loop EXIT_LOOP_ARGS=${EXIT_LOOP_ARGS:-}
[ -x "$KVMPROF" ] && [ -x "$LOOP" ] || cargo build --release -p profiler-daemon -p kvm-exit-loop --bins --quiet
for tool in bpftrace perf bpftool; do
  command -v "$tool" >/dev/null || { echo "bench-peers: $tool not found: run scripts/setup.sh" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'bpf_stats_restore; rm -rf "$tmp"' EXIT
bpf_stats_on
python3 - "$rounds" "$outs" "$tmp" <<'PY'
import ctypes, glob, json, os, signal, statistics, subprocess, sys, time

rounds, outs, tmp = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
KVMPROF, LOOP = os.environ["KVMPROF"], os.environ["LOOP"]
LOOP_ARGS = os.environ["EXIT_LOOP_ARGS"].split()
PORT = 0x80
MODES = os.environ.get("MODES", "none bpftrace perf kvmprof records").split()
BEFORE = os.environ.get("KVMPROF_BEFORE")  # another kvmprof build, measured in the same rounds
if BEFORE:
    MODES += ["before", "before-records"]
LABEL = {
    "none": "no tracer",
    "bpftrace": "bpftrace, count-only on kvm:kvm_pio",
    "perf": "perf record -e kvm:kvm_pio,kvm:kvm_userspace_exit",
    "kvmprof": "kvmprof record (aggregate)",
    "records": "kvmprof record --records",
    "before": f"kvmprof record (aggregate), {BEFORE}",
    "before-records": f"kvmprof record --records, {BEFORE}",
}

# Keep run-time stats on for the whole benchmark even if another process writes 0 to
# kernel.bpf_stats_enabled meanwhile: BPF_ENABLE_STATS holds its own reference until this
# process exits (bpf(2), BPF_ENABLE_STATS = 32, type BPF_STATS_RUN_TIME = 0; x86_64 SYS_bpf = 321).
_attr = (ctypes.c_uint32 * 4)(0, 0, 0, 0)
STATS_FD = ctypes.CDLL(None, use_errno=True).syscall(321, 32, ctypes.byref(_attr), ctypes.sizeof(_attr))
if STATS_FD < 0:
    sys.exit(f"bench-peers: BPF_ENABLE_STATS failed (errno {ctypes.get_errno()})")

def prog_ids(pid):
    ids = set()
    for fd in glob.glob(f"/proc/{pid}/fdinfo/*"):
        try:
            for line in open(fd):
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids

def wait_for(cond, what, timeout=20.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            sys.exit(f"bench-peers: timed out waiting for {what}")
        time.sleep(0.05)

def run(mode, r):
    guest = subprocess.Popen([LOOP, "--outs", str(outs), "--pause-then-outs", "0", "--wait-for-go", *LOOP_ARGS],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    assert guest.stdout.readline().strip() == "ready"
    rec = f"{tmp}/{mode}-{r}.kvmprof"
    tracer = None
    if mode == "bpftrace":
        prog = f"tracepoint:kvm:kvm_pio /pid == {guest.pid}/ {{ @[args->port] = count(); }}"
        tracer = subprocess.Popen(["bpftrace", "-e", prog], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert tracer.stdout.readline().startswith("Attaching")
        wait_for(lambda: prog_ids(tracer.pid), "bpftrace's program")
        time.sleep(1.0)  # from loaded to attached
    elif mode == "perf":
        tracer = subprocess.Popen(["perf", "record", "-q", "-e", "kvm:kvm_pio,kvm:kvm_userspace_exit", "-p", str(guest.pid),
                                   "-o", f"{tmp}/perf.data"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
    elif mode in ("kvmprof", "records", "before", "before-records"):
        args = [BEFORE if mode.startswith("before") else KVMPROF, "record", "-o", rec, "--pid", str(guest.pid)] + (["--records"] if mode.endswith("records") else [])
        tracer = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: len(prog_ids(tracer.pid)) >= 4, "kvmprof's programs")
        time.sleep(1.0)  # attached, counted window open
    t0 = time.monotonic()
    guest.stdin.write("go\n")
    guest.stdin.flush()
    assert guest.stdout.readline().strip() == "paused"
    wall = time.monotonic() - t0
    progs = []
    if tracer is not None and mode != "perf":
        ids = prog_ids(tracer.pid)
        shown = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, check=True).stdout)
        progs = [p for p in shown if p["id"] in ids and p.get("run_cnt")]
        if not progs or not sum(p.get("run_time_ns", 0) for p in progs):
            sys.exit(f"bench-peers: {mode}: no bpf_stats run time for its programs (stats off?)")
    guest.stdin.write("\n")
    guest.stdin.flush()
    guest.communicate()
    counted = None
    if mode == "bpftrace":
        tracer.send_signal(signal.SIGINT)
        out, _ = tracer.communicate()
        counted = sum(int(l.split(":")[1]) for l in out.splitlines() if l.startswith(f"@[{PORT}]"))
    elif mode == "perf":
        tracer.send_signal(signal.SIGINT)
        tracer.wait()
    elif tracer is not None:
        tracer.wait()  # ends with the guest
        rep = json.loads(subprocess.run([BEFORE if mode.startswith("before") else KVMPROF, "report", rec, "--by", "port", "--format", "json", "--top", "100"],
                                        capture_output=True, check=True).stdout)
        counted = sum(row["count"] for row in rep["rows"] if row["port"] == hex(PORT) and row["direction"] == "out")
        if rep["total_exits"] != outs + 2:  # + the pausing `in` and the final `hlt`
            sys.exit(f"bench-peers: {mode} recorded {rep['total_exits']} exits, the guest made {outs + 2}")
    if counted is not None and counted != outs:
        sys.exit(f"bench-peers: {mode} counted {counted} port writes, the guest made {outs}")
    return wall, progs

results = {m: [] for m in MODES}
for r in range(rounds):
    order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
    for mode in order:
        results[mode].append(run(mode, r))
    print(f"round {r + 1}/{rounds} done", file=sys.stderr)

med = statistics.median
ns_exit = lambda progs: sum(p["run_time_ns"] for p in progs) / outs
base_wall = med(w for w, _ in results["none"]) if "none" in MODES else float("nan")
print(f"kvm-exit-loop, {outs} port-write exits per run, {rounds} interleaved rounds; medians.\n")
print("| mode | guest wall-clock (s) | slowdown | eBPF runs per exit | eBPF ns per exit (bpf_stats) | x bpftrace count-only (same rounds) |")
print("|---|---:|---:|---:|---:|---:|")
for m in MODES:
    walls = [w for w, _ in results[m]]
    slow = f"{(med(walls) / base_wall - 1) * 100:+.1f} %" if m != "none" else "-"
    runs = ns = ratio = "-"
    if results[m][0][1]:
        runs = f"{med(sum(p['run_cnt'] for p in ps) / outs for _, ps in results[m]):.2f}"
        ns = f"{med(ns_exit(ps) for _, ps in results[m]):.0f}"
        if "bpftrace" in MODES:
            ratio = f"{med(ns_exit(ps) / ns_exit(b) for (_, ps), (_, b) in zip(results[m], results['bpftrace'])):.2f}"
    print(f"| {LABEL[m]} | {med(walls):.3f} | {slow} | {runs} | {ns} | {ratio} |")
if "bpftrace" in MODES:
    extra = med(sum(p["run_cnt"] for p in ps) / outs for _, ps in results["bpftrace"]) - 1
    if extra > 0.005:
        print(f"\nNOTE: kvm:kvm_pio fired {extra:.1%} more often than the guest's port writes: other VMs ran during the"
              " benchmark, and the eBPF figures include the programs' (early-return) runs for their events.")
for rec_mode, agg_mode in (("records", "kvmprof"), ("before-records", "before")):
    if rec_mode in MODES and agg_mode in MODES:
        ratio = med(ns_exit(r) / ns_exit(a) for (_, r), (_, a) in zip(results[rec_mode], results[agg_mode]))
        print(f"\n{LABEL[rec_mode]}: {ratio:.2f} x {LABEL[agg_mode]} (eBPF ns per exit, median of the rounds' ratios)")
print("\nPer program (median ns per run; runs per exit):\n")
print("| mode | program | runs per exit | ns per run | ns per exit |")
print("|---|---|---:|---:|---:|")
for m in [m for m in ("bpftrace", "kvmprof", "records", "before", "before-records") if m in MODES]:
    names = sorted({p["name"] for _, ps in results[m] for p in ps})
    for n in names:
        per = [[p for p in ps if p["name"] == n] for _, ps in results[m]]
        cnt = med(sum(p["run_cnt"] for p in ps) / outs for ps in per)
        per_run = med(sum(p["run_time_ns"] for p in ps) / max(1, sum(p["run_cnt"] for p in ps)) for ps in per)
        print(f"| {m} | `{n}` | {cnt:.2f} | {per_run:.0f} | {med(sum(p['run_time_ns'] for p in ps) / outs for ps in per):.0f} |")
PY
