#!/usr/bin/env bash
# Fuzz the kallsyms parser and the ELF loading path, SECONDS_EACH (default 600) each,
# one job each. Seeds: lines of this machine's /proc/kallsyms, and small gcc -g ELFs.
# Usage: symbolizer/fuzz/run.sh [SECONDS_EACH] [kallsyms|elf|both]
set -euo pipefail
cd "$(dirname "$0")"
T=${1:-600}
WHICH=${2:-both}
mkdir -p corpus/kallsyms corpus/elf
if [ ! -e corpus/kallsyms/seed-proc ]; then
    head -300 /proc/kallsyms > corpus/kallsyms/seed-proc
    grep '\[' /proc/kallsyms | head -50 > corpus/kallsyms/seed-modules || true
    printf 'ffffffff81000000 T _text\nffffffff81000010 t f\nffffffffc0000000 t m\t[mod]\n' > corpus/kallsyms/seed-small
fi
if [ ! -e corpus/elf/seed-small ]; then
    tmp=$(mktemp -d)
    printf 'static inline int sq(int x){return x*x;}\nint f(int x){return sq(x)+1;}\nvoid _text(void){}\n' > "$tmp/a.c"
    gcc -O2 -g -nostdlib -static -no-pie -Wl,-e,_text "$tmp/a.c" -o corpus/elf/seed-small
    gcc -O2 -g -c "$tmp/a.c" -o corpus/elf/seed-object
    gcc -O2 -g1 -gdwarf-4 -nostdlib -static -no-pie -Wl,-e,_text "$tmp/a.c" -o corpus/elf/seed-dwarf4
    rm -rf "$tmp"
fi
run() {
    cargo +nightly fuzz run "$1" "corpus/$1" -- -max_total_time="$T" -rss_limit_mb=2048 -max_len="$2" 2>&1 \
        | tee "fuzz-$1.log" | grep -E "^#[0-9]+.*(DONE|pulse)|Done|SUMMARY|crash-|panicked" || true
}
case $WHICH in
    kallsyms) run kallsyms 65536 ;;
    elf) run elf 65536 ;;
    both) run kallsyms 65536 & run elf 65536; wait ;;
esac
