#!/usr/bin/env bash
# Idempotent fresh-machine set-up, called by both README commands (scripts/demo, scripts/test).
# Installs: Debian packages, the nightly toolchain pieces for eBPF, bpf-linker built against
# nightly's own LLVM (cargo install of bpf-linker fails without a system libLLVM), the
# x86_64-unknown-none target for the bundled guest, and mounts tracefs.
# Slow artefacts are cached outside the clone, under $KVMPROF_CACHE (default /var/cache/kvmprof).
set -euo pipefail

BPF_LINKER_VERSION=0.13.0
CACHE=${KVMPROF_CACHE:-/var/cache/kvmprof}
log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and mounts tracefs); try: sudo $0"
mkdir -p "$CACHE"

# --- Debian packages ---------------------------------------------------------------------
# qemu-system-x86: the README's "profile your own QEMU guest"; bpftool: inspecting the loaded
# programs; binutils, gcc, g++: the symbolizer tests build C/C++ programs and compare against
# addr2line; prometheus: the `kvmprof serve` tests start a real Prometheus server on loopback
# and check what it scraped (and that every Grafana dashboard expression returns data);
# bpftrace, linux-perf: the peer benchmark (scripts/bench-peers.sh) measures kvmprof against them;
# iputils-ping: the network tests ping through real TAP devices; protobuf-compiler: the Perfetto
# test decodes `report --format perfetto` with `protoc --decode_raw`.
want_pkgs=(qemu-system-x86 bpftool binutils gcc g++ prometheus bpftrace linux-perf iputils-ping protobuf-compiler)
missing=()
for p in "${want_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>"$CACHE/apt.log" \
    || { cat "$CACHE/apt.log" >&2; die "apt-get install ${missing[*]} failed"; }
  # The package enables a system Prometheus on every address (:9090). The tests only need the
  # binary, so a server that setup itself just installed is not left running or enabled; a
  # Prometheus the machine already had is not touched.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# --- Rust toolchain pieces -----------------------------------------------------------------
command -v rustup >/dev/null || die "rustup not found; install Rust with rustup first"
rustup toolchain list | grep -q '^nightly-' || { log "installing nightly"; rustup toolchain install nightly --profile minimal >&2; }
rustup component list --installed --toolchain nightly | grep -q '^rust-src' \
  || { log "adding rust-src to nightly"; rustup component add rust-src --toolchain nightly >&2; }
rustup target list --installed | grep -q '^x86_64-unknown-none$' \
  || { log "adding target x86_64-unknown-none"; rustup target add x86_64-unknown-none >&2; }

# --- bpf-linker against nightly's LLVM, cached by (bpf-linker version, LLVM library) ---------
nightly_lib="$(rustc +nightly --print sysroot)/lib"
libllvm=$(cd "$nightly_lib" && ls libLLVM.so.* 2>/dev/null | head -n1 || true)
[ -n "$libllvm" ] || die "no libLLVM.so.* in $nightly_lib; reinstall the nightly toolchain"
llvm_major=$(echo "$libllvm" | sed -E 's/^libLLVM\.so\.([0-9]+).*/\1/')
linker_root="$CACHE/bpf-linker-$BPF_LINKER_VERSION-${libllvm#libLLVM.so.}"
# bpf-linker links against libLLVM.so and loads it by its SONAME at run time (via the rpath).
llvm_prefix="$CACHE/rustllvm-${libllvm#libLLVM.so.}"
mkdir -p "$llvm_prefix/lib"
ln -sf "$nightly_lib/$libllvm" "$llvm_prefix/lib/libLLVM.so"
ln -sf "$nightly_lib/$libllvm" "$llvm_prefix/lib/$libllvm"
if [ ! -x "$linker_root/bin/bpf-linker" ]; then
  log "building bpf-linker $BPF_LINKER_VERSION against $libllvm (about 2 minutes)"
  LLVM_PREFIX="$llvm_prefix" RUSTFLAGS="-C link-arg=-Wl,-rpath,$llvm_prefix/lib" \
    cargo install bpf-linker --locked --version "$BPF_LINKER_VERSION" --no-default-features \
      --features "llvm-$llvm_major" --root "$linker_root" >&2
fi
mkdir -p "$CACHE/bin"
ln -sf "$linker_root/bin/bpf-linker" "$CACHE/bin/bpf-linker"
"$CACHE/bin/bpf-linker" --version >/dev/null || die "bpf-linker in $linker_root does not run; delete that directory and run $0 again"

# --- tracefs -------------------------------------------------------------------------------
if [ ! -e /sys/kernel/tracing/events/kvm ]; then
  mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing \
    || die "cannot mount tracefs; run: mount -t tracefs nodev /sys/kernel/tracing"
fi
[ -e /sys/kernel/tracing/events/kvm ] || die "no kvm tracepoints under /sys/kernel/tracing/events/kvm; is the kvm module loaded? (modprobe kvm)"

log "ok (bpf-linker: $CACHE/bin/bpf-linker)"
