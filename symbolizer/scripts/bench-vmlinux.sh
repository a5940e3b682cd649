#!/usr/bin/env bash
# Scale and exactness benchmark against binutils addr2line on a real kernel (not CI).
# Installs Debian's linux-image-*-cloud-amd64-dbg if needed, samples N addresses
# uniformly over the vmlinux .text (fixed seed), symbolizes them with the symbolizer
# (cold then warm) and with `addr2line -a -f -i -C`, compares the answers and prints
# load time, peak RSS and lookups/s with the ratios.
# Usage: symbolizer/scripts/bench-vmlinux.sh [VMLINUX] [N]   (N defaults to 100000)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${2:-100000}
VMLINUX=${1:-$(bash scripts/debian-vmlinux.sh)}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-sym}
cargo build -q --release -p symbolizer --example bench-lookup
BIN=$CARGO_TARGET_DIR/release/examples/bench-lookup
W=$(mktemp -d /tmp/bench-vmlinux.XXXXXX)

read -r TEXT_START TEXT_SIZE < <(readelf -S -W "$VMLINUX" | sed -E 's/^ *\[ *[0-9]+\] *//' | awk '$1==".text" {print $3, $5}')
python3 - "$TEXT_START" "$TEXT_SIZE" "$N" > "$W/addrs" <<'PY'
import random, sys
start, size, n = int(sys.argv[1], 16), int(sys.argv[2], 16), int(sys.argv[3])
rng = random.Random(4)
for _ in range(n):
    print("0x%x" % (start + rng.randrange(size)))
PY

echo "vmlinux: $VMLINUX ($(du -h "$VMLINUX" | cut -f1)), $N addresses over .text"
/usr/bin/time -v "$BIN" "$VMLINUX" "$W/addrs" "$W/ours" > "$W/ours.stats" 2> "$W/ours.time"
# addr2line's own load time: the same run with a single address.
L0=$(date +%s.%N)
head -1 "$W/addrs" | addr2line -a -f -i -C -e "$VMLINUX" > /dev/null
L1=$(date +%s.%N)
T0=$(date +%s.%N)
/usr/bin/time -v addr2line -a -f -i -C -e "$VMLINUX" < "$W/addrs" > "$W/binutils.raw" 2> "$W/binutils.time"
T1=$(date +%s.%N)
# Our documented difference: no " (discriminator N)".
sed -E 's/ \(discriminator [0-9]+\)$//' "$W/binutils.raw" > "$W/binutils"

cat "$W/ours.stats"
rss_ours=$(awk -F': ' '/Maximum resident/ {print $2}' "$W/ours.time")
rss_bu=$(awk -F': ' '/Maximum resident/ {print $2}' "$W/binutils.time")
bu_s=$(echo "$T1 - $T0" | bc -l)
bu_load=$(echo "$L1 - $L0" | bc -l)
get() { awk -F= -v k="$1" '$1==k {print $2}' "$W/ours.stats"; }
python3 - "$(get load_s)" "$(get cold_s)" "$(get warm_s)" "$bu_s" "$N" "$rss_ours" "$rss_bu" "$bu_load" <<'PY'
import sys
load, cold, warm, bu, n, rss_o, rss_b, bu_load = map(float, sys.argv[1:])
bu_look = max(bu - bu_load, 1e-9)
print(f"symbolizer: load {load:.2f} s, peak RSS {rss_o/1024:.0f} MiB, "
      f"cold {n/cold:,.0f} lookups/s, warm {n/warm:,.0f} lookups/s")
print(f"addr2line : load {bu_load:.2f} s, whole run {bu:.2f} s, {n/bu_look:,.0f} lookups/s after load, "
      f"peak RSS {rss_b/1024:.0f} MiB")
print(f"ratio to addr2line: load time {load/bu_load:.2f}x of its, whole run (load+cold) {bu/(load+cold):.1f}x, "
      f"cold lookups/s {bu_look/cold:.1f}x, warm lookups/s {bu_look/warm:.0f}x, peak RSS {rss_o/rss_b:.2f}x")
PY
# Exact comparison; the only accepted differences are classified and counted there.
python3 symbolizer/scripts/compare-answers.py "$VMLINUX" "$W/binutils" "$W/ours"
echo "work dir: $W"
