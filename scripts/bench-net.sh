#!/usr/bin/env bash
# The paper's network experiments (Fig. 3, Fig. 4 / Fig. 9, Table 2) with more rounds than the
# demo: `kvmprof demo --sections net` with ROUNDS rounds (each runs net-echo, net-rx and
# net-tx with the guest driver in irq and then napi mode, interleaved; medians are reported)
# and longer streams. Prints the demo's text (sections 1-3 here) and then the BENCHMARKS.md
# table: per round and mode, throughput, request/response rate and exits per packet.
#   usage: sudo scripts/bench-net.sh [ROUNDS] [TO_GUEST] [FROM_GUEST] [SIZE] [RR_SECONDS]
#   (datagrams offered to the guest at 1000/s, datagrams it sends, UDP payload bytes)
#   e.g.   sudo scripts/bench-net.sh 5 2000 600 1024 5
# Work files (recordings, consoles, plots, demo.json) stay in $OUT (default: a temp dir, kept).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "scripts/bench-net.sh: run as root (eBPF, KVM, network namespaces): sudo $0 $*" >&2
  exit 1
fi
rounds=${1:-5}
to_guest=${2:-2000}
from_guest=${3:-600}
size=${4:-1024}
rr_seconds=${5:-5}
out=${OUT:-$(mktemp -d /tmp/kvmprof-bench-net.XXXXXX)}
mkdir -p "$out"
bin=${CARGO_TARGET_DIR:-target}/release
export PATH="${KVMPROF_CACHE:-/var/cache/kvmprof}/bin:$PATH"
cargo build --release --workspace --bins --quiet

"$bin/kvmprof" demo --sections net --out "$out" --net-rounds "$rounds" --net-to-guest "$to_guest" \
  --net-from-guest "$from_guest" \
  --net-size "$size" --net-rr-seconds "$rr_seconds" >"$out/bench.txt"
cat "$out/bench.txt"

echo
echo "per round (irq | napi): stream to guest Mbit/s, from guest Mbit/s, RR/s, exits per packet to/from, exits per RR, NIC interrupts per packet to guest"
jq -r '
  def r2: (. * 100 | round) / 100;
  .net.stream.rounds | to_entries[] | .key as $i | .value | [.irq, .napi] | map(
    "\(.mode): \(.to_guest.mbit_s | r2) \(.from_guest.mbit_s | r2) \(.rr.per_s | r2) \(.to_guest.exits.per_packet | r2)/\(.from_guest.exits.per_packet | r2) \(.rr.exits.per_packet | r2) \((.to_guest.nic.interrupts / (.to_guest.datagrams_received | if . == 0 then 1 else . end)) | r2)"
  ) | "round \($i + 1): " + join("  |  ")' "$out/demo.json"
echo
jq -r '.net.stream | "medians of \(.irq.rounds) rounds: removing NAPI: stream to guest \(.no_napi_change_pct.udp_stream_to_guest | . * 10 | round / 10)%, from guest \(.no_napi_change_pct.udp_stream_from_guest | . * 10 | round / 10)%, RR \(.no_napi_change_pct.udp_rr | . * 10 | round / 10)% (paper: +60% each)"' "$out/demo.json"
echo "work files: $out"
