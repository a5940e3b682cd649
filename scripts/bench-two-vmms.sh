#!/usr/bin/env bash
# Same guest, two device models: the bundled guest's disk-write of N sectors on tinyvmm and on
# QEMU (PIIX IDE, i440fx `pc` machine), both recorded by kvmprof, while bpftrace measures the
# time each vCPU thread spends in user space per exit (kvm_fpu unload -> load). Prints the
# BENCHMARKS.md table: per IDE port and direction and in total, exits per IDE command and
# mean/p99 time per exit, and the user-space vs kernel split of the mean.
#   usage: sudo scripts/bench-two-vmms.sh [SECTORS]
set -euo pipefail
cd "$(dirname "$0")/.."
sectors=${1:-200}
bin=${CARGO_TARGET_DIR:-target}/release
cargo build --release -p profiler-daemon -p vmm --bins --examples --quiet
tmp=$(mktemp -d)
qemu_pid=
bpf_pid=
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null || true
  [ -n "$bpf_pid" ] && kill "$bpf_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
"$bin/tinyvmm" guest-elf -o "$tmp/guest.elf"
truncate -s 1M "$tmp/tinyvmm.img" "$tmp/qemu.img"

# User-space time per exit, by process, port and direction (1 = out). A port write's kvm_pio
# fires before the exit, a read's after it completes: the time is charged accordingly. Every
# port the workload touches is handled in user space on both VMMs.
cat >"$tmp/user.bt" <<'BT'
tracepoint:kvm:kvm_pio /comm == "vcpu0" || comm == "CPU 0/KVM"/ {
  if (args->rw) { @wport[tid] = args->port + 1; }
  else if (@pend[tid]) { @user_ns[pid, args->port, 0] = sum(@pend[tid]); @user_n[pid, args->port, 0] = count(); delete(@pend[tid]); }
}
tracepoint:kvm:kvm_fpu /comm == "vcpu0" || comm == "CPU 0/KVM"/ {
  if (args->load == 0) { @t[tid] = nsecs; }
  else if (@t[tid]) {
    $d = nsecs - @t[tid];
    delete(@t[tid]);
    if (@wport[tid]) { @user_ns[pid, @wport[tid] - 1, 1] = sum($d); @user_n[pid, @wport[tid] - 1, 1] = count(); delete(@wport[tid]); }
    else { @pend[tid] = $d; }
  }
}
END { clear(@t); clear(@wport); clear(@pend); }
BT
bpftrace "$tmp/user.bt" >"$tmp/user.txt" 2>"$tmp/bpftrace.err" &
bpf_pid=$!
sleep 5 # bpftrace attaches

# tinyvmm: the guest runs its workload at once.
"$bin/kvmprof" record -o "$tmp/tinyvmm.kvmprof" -- "$bin/tinyvmm" run --workload disk-write \
  --count "$sectors" --skip-pmtmr-calibration --disk "$tmp/tinyvmm.img" >"$tmp/tinyvmm.out" 2>/dev/null

# QEMU: boot (SeaBIOS), wait on COM1, record by PID, then one byte starts the workload.
mkfifo "$tmp/in"
qemu-system-x86_64 -name bench,debug-threads=on -enable-kvm -machine pc -m 64 -no-reboot \
  -display none -monitor none -serial stdio -kernel "$tmp/guest.elf" \
  -append "workload=disk-write count=$sectors skip-pmtmr-calibration wait=serial" \
  -drive "file=$tmp/qemu.img,if=ide,format=raw" -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
  <"$tmp/in" >"$tmp/qemu.out" 2>/dev/null &
qemu_pid=$!
exec 3>"$tmp/in"
until grep -q '@@waiting' "$tmp/qemu.out"; do sleep 0.5; done
"$bin/kvmprof" record -o "$tmp/qemu.kvmprof" --pid "$qemu_pid" 2>"$tmp/record.err" &
rec_pid=$!
until grep -q 'kvmprof: recording' "$tmp/record.err"; do sleep 0.2; done
printf g >&3
wait "$rec_pid"
wait "$qemu_pid" || true
qemu_pid=
exec 3>&-
kill -INT "$bpf_pid"
wait "$bpf_pid" || true
bpf_pid=

cmp "$tmp/tinyvmm.img" "$tmp/qemu.img" && echo "disk images: identical ($(stat -c %s "$tmp/qemu.img") bytes)"
grep -h '@@result' "$tmp/tinyvmm.out" "$tmp/qemu.out"
"$bin/examples/two_vmms_table" "$sectors" "$tmp/tinyvmm.kvmprof" "$tmp/qemu.kvmprof" "$tmp/user.txt"
