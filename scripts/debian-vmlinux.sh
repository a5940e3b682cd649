#!/usr/bin/env bash
# Prints the path of a real distribution vmlinux (Debian's linux-image-6.1.0-47-cloud-amd64,
# built with the ORC unwinder and without frame pointers), downloading its -dbg package once
# and caching the extracted ELF outside the clone, under $KVMPROF_CACHE/vmlinux/<version>/.
# Used by the KASLR and ORC tests and benchmarks; they fail (never skip) when it cannot be had.
set -euo pipefail
VERSION=6.1.0-47-cloud-amd64
CACHE=${KVMPROF_CACHE:-/var/cache/kvmprof}
dir="$CACHE/vmlinux/$VERSION"
out="$dir/vmlinux"
if [ ! -s "$out" ]; then
  mkdir -p "$dir"
  work=$(mktemp -d "$dir/.download.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "debian-vmlinux: downloading linux-image-$VERSION-dbg (about 280 MB, once)" >&2
  if ! (cd "$work" && apt-get download "linux-image-$VERSION-dbg" >&2); then
    # Debian drops old kernel ABIs from its mirrors in time: any 6.1 cloud kernel serves the
    # same purpose (a real ORC-built vmlinux); it is cached under this script's VERSION.
    other=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-cloud-amd64-dbg$' | awk '{print $1}' | sort -V | tail -1)
    [ -n "$other" ] && (cd "$work" && apt-get download "$other" >&2) || {
      echo "debian-vmlinux: error: apt-get download linux-image-$VERSION-dbg failed; run apt-get update, or put a vmlinux at $out by hand" >&2
      exit 1
    }
  fi
  # Only the vmlinux (the package is mostly module debug info); tar stops reading early.
  dpkg-deb --fsys-tarfile "$work"/*.deb | tar -x -C "$work" --wildcards './usr/lib/debug/boot/vmlinux-*' 2>/dev/null || true
  found=$(ls "$work"/usr/lib/debug/boot/vmlinux-* 2>/dev/null | head -n1)
  [ -s "$found" ] || { echo "debian-vmlinux: error: no vmlinux in the downloaded package" >&2; exit 1; }
  mv "$found" "$out.tmp" && mv "$out.tmp" "$out"
fi
echo "$out"
