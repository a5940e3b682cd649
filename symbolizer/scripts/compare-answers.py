#!/usr/bin/env python3
"""Compare the symbolizer's answers with binutils addr2line, address by address.

Usage: compare-answers.py ELF BINUTILS_OUT OURS_OUT
Both files are in `addr2line -a -f -i -C` shape with discriminators stripped.
Differences are accepted only in two documented classes, each counted:
  * path-join: binutils prints `dir//file` where the DWARF directory ends in `/`;
    ours (and llvm-symbolizer) print `dir/file`. Same file.
  * binutils-location: same frames and identical function names, but binutils' file:line
    differs, and llvm-symbolizer (a third, independent implementation) gives exactly our
    file:line for every frame. Seen: binutils 2.40 pairs a line with the CU's primary file
    (`trace.c:367` where the line table says `include/trace/events/xen.h:367`), and gives a
    line to inter-function padding (nop bytes after a function's end) that the line table
    does not cover. (`??:0` from llvm-symbolizer, nothing found, counts as `??:?`.)
  * padding: the address lies in inter-function padding (at or after the end `st_size`
    gives the function before it, before the next symbol). binutils gives it the last line
    row before it; we give that function with no line (the bytes belong to no source line;
    llvm-symbolizer finds nothing there). Function names must still be identical.
Anything else is a real mismatch: exit 1.
"""
import bisect
import re
import subprocess
import sys


def blocks(text):
    out, order, cur = {}, [], None
    for line in text.splitlines():
        if line.startswith("0x"):
            cur = int(line, 16)
            out[cur] = []
            order.append(cur)
        else:
            out[cur].append(re.sub(r" \(discriminator \d+\)$", "", line))
    return out, order


def padding_ranges(elf):
    """Sorted (start, size) of sized text symbols, from nm."""
    out = subprocess.run(["nm", "-S", "--defined-only", elf], capture_output=True, text=True, check=True).stdout
    syms = []
    for line in out.splitlines():
        f = line.split()
        if len(f) == 4 and f[2] in "tTwW":
            syms.append((int(f[0], 16), int(f[1], 16)))
    syms.sort()
    return syms


def in_padding(syms, addr):
    i = bisect.bisect_right(syms, (addr, float("inf"))) - 1
    if i < 0:
        return False
    start, end = syms[i][0], syms[i][0]
    while i >= 0 and syms[i][0] == start:  # aliases share the start; take the longest
        end = max(end, start + syms[i][1])
        i -= 1
    return addr >= end


def main():
    elf, bu_path, ours_path = sys.argv[1:4]
    syms = padding_ranges(elf)
    bu, order = blocks(open(bu_path).read())
    ours, _ = blocks(open(ours_path).read())
    counts = {"identical": 0, "path-join": 0, "padding": 0, "binutils-location": 0, "mismatch": 0}
    suspects = []
    for a in order:
        if bu[a] == ours[a]:
            counts["identical"] += 1
        elif [x.replace("//", "/") for x in bu[a]] == ours[a]:
            counts["path-join"] += 1
        elif len(bu[a]) == len(ours[a]) == 2 and bu[a][0] == ours[a][0] and in_padding(syms, a):
            counts["padding"] += 1
        else:
            suspects.append(a)
    if suspects:
        llvm = subprocess.run(
            ["llvm-symbolizer", "--obj=" + elf, "--output-style=GNU", "-f", "-i", "-C", "--print-address"],
            input="".join("0x%x\n" % a for a in suspects), capture_output=True, text=True, check=True,
        ).stdout
        third, _ = blocks(llvm)
        for a in suspects:
            t = [x if x != "??:0" else "??:?" for x in third.get(a, [])]
            same_names = len(bu[a]) == len(ours[a]) and bu[a][0::2] == ours[a][0::2]
            if same_names and len(t) == len(ours[a]) and t[1::2] == ours[a][1::2]:
                counts["binutils-location"] += 1
            else:
                counts["mismatch"] += 1
                if counts["mismatch"] <= 10:
                    print("MISMATCH 0x%x\n  binutils: %s\n  ours:     %s\n  llvm:     %s"
                          % (a, bu[a], ours[a], third.get(a)), file=sys.stderr)
    print("compare: " + ", ".join("%s=%d" % kv for kv in counts.items()), flush=True)
    sys.exit(1 if counts["mismatch"] else 0)


if __name__ == "__main__":
    main()
