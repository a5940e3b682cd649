# What the benchmarks that read eBPF run time from the kernel's own bpf_stats share
# (kernel.bpf_stats_enabled=1, then `bpftool -j prog show`: run_time_ns and run_cnt per program).
# Sourced, not run:  . scripts/lib/bpf-stats.sh

# kvmprof's programs as bpftool names them (the kernel keeps the first 15 characters of a name),
# for the scripts' Python, which reads it from the environment.
export KVMPROF_PROGS="kvm_pio kvm_mmio kvm_userspace_e kvm_fpu vcpu_of_insn cpu_switch"

# Turns bpf_stats on. Call bpf_stats_restore from the script's EXIT trap: it puts back the value
# bpf_stats_on found (and does nothing if bpf_stats_on never ran).
bpf_stats_on() {
  bpf_stats_was=$(sysctl -n kernel.bpf_stats_enabled)
  sysctl -q kernel.bpf_stats_enabled=1
}

bpf_stats_restore() {
  if [ -n "${bpf_stats_was:-}" ]; then sysctl -q kernel.bpf_stats_enabled="$bpf_stats_was"; fi
}

# The ids of the eBPF programs process $1 holds open (from /proc/$1/fdinfo), one a line: that
# process's programs only, where other tools may have loaded programs with the same names.
# Fails (under pipefail) when it finds none.
bpf_prog_ids() {
  grep -h '^prog_id:' /proc/"$1"/fdinfo/* 2>/dev/null | awk '{print $2}' | sort -u
}
