#!/usr/bin/env bash
# Fuzz kvmprof's parsers and tinyvmm's devices with cargo-fuzz (libFuzzer + AddressSanitizer,
# which also reports leaks), one target at a time, one process (one job) each, SECONDS_EACH (default 600)
# per target. Each run starts from the committed seeds (fuzz/seeds/TARGET) and grows a working
# corpus beside them (fuzz/corpus/TARGET, not committed); a crash lands in
# fuzz/artifacts/TARGET/. The last lines of each log give the runs, execs/s and coverage.
#
# Usage: scripts/fuzz.sh [SECONDS_EACH] [TARGET...]        (default: every target)
#        scripts/fuzz.sh build [FUZZ_CRATE_DIR...]          (only build them)
#        scripts/fuzz.sh summary                           (the table of the last runs' logs)
# Targets: recording import guest_memory_map serve_config (profiler-daemon/fuzz),
#          port_io batch_hypercall (vmm/fuzz). Needs: cargo install cargo-fuzz; nightly.
# The seeds are also replayed through the same harnesses by `cargo test` (tests/fuzz_corpora.rs
# of each crate), so CI checks them without fuzzing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH=/var/cache/kvmprof/bin:$PATH
base=${CARGO_TARGET_DIR:-$root/target}
logs=${FUZZ_LOGS:-$root/target/fuzz-logs}
mkdir -p "$logs"

dir_of() {
    case $1 in
        recording | import | guest_memory_map | serve_config) echo "$root/profiler-daemon/fuzz" ;;
        port_io | batch_hypercall) echo "$root/vmm/fuzz" ;;
        *) echo "unknown fuzz target $1 (see the usage in $0)" >&2; exit 2 ;;
    esac
}
# One target directory per fuzz crate (instrumented builds; the two can build at once).
target_of() {
    case $1 in
        */profiler-daemon/fuzz) echo "$base/fuzz" ;;
        *) echo "$base/fuzz-vmm" ;;
    esac
}

if [ "${1:-}" = build ]; then
    shift
    for d in "${@:-$root/profiler-daemon/fuzz $root/vmm/fuzz}"; do
        for dd in $d; do (cd "$dd" && CARGO_TARGET_DIR=$(target_of "$dd") cargo +nightly fuzz build); done
    done
    exit 0
fi

# The BENCHMARKS.md table from the logs of the last runs.
if [ "${1:-}" = summary ]; then
    echo "| target | seconds | runs | execs/s | coverage (edges) | features | corpus | peak RSS MiB | crashes |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for t in recording import guest_memory_map serve_config port_io batch_hypercall; do
        f=$logs/fuzz-$t.log
        [ -f "$f" ] || continue
        last=$(grep -E "^#[0-9]+[[:space:]]+DONE" "$f" | tail -1 || true)
        num() { grep -oE "$1" "$f" | grep -oE "[0-9]+$" | tail -1 || true; }
        field() { echo "$last" | grep -oE "$1 [0-9]+(/[0-9A-Za-z]+)?" | cut -d' ' -f2 || true; }
        crashes=$(grep -cE "ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|panicked" "$f" || true)
        echo "| \`$t\` | $(num 'Done [0-9]+ runs in [0-9]+') | $(num 'number_of_executed_units: *[0-9]+') | $(num 'average_exec_per_sec: *[0-9]+') | $(field cov:) | $(field ft:) | $(field corp:) | $(num 'peak_rss_mb: *[0-9]+') | $crashes |"
    done
    exit 0
fi

T=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(recording import guest_memory_map serve_config port_io batch_hypercall)
for t in "${targets[@]}"; do
    d=$(dir_of "$t")
    mkdir -p "$d/corpus/$t" "$d/artifacts/$t"
    echo "== $t: ${T}s, log $logs/fuzz-$t.log"
    # -max_len 64 KiB: room for a few hundred trace lines or a recording with many exits.
    (cd "$d" && CARGO_TARGET_DIR=$(target_of "$d") cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$T" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1) >"$logs/fuzz-$t.log" 2>&1 || {
        echo "== $t FAILED: see $logs/fuzz-$t.log and $d/artifacts/$t/"
        continue
    }
    grep -E "^#[0-9]+.*DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb" "$logs/fuzz-$t.log" || true
done
