#!/usr/bin/env python3
"""Where exo's numerics leave llama.cpp's: compares the tensors scripts/llamacpp-dump.sh wrote
(LLAMA_DIR, with its index.tsv) with those the engine wrote under EXO_DUMP_DIR (EXO_DIR), in
llama.cpp's graph order, and prints for each tensor both have: how many values differ, the
largest difference relative to the tensor's largest magnitude, and where the first difference is.

    scripts/compare-dumps.py LLAMA_DIR EXO_DIR [--all]

Without --all, stops after the first ten tensors that differ."""
import math
import struct
import sys
from pathlib import Path


def read(path):
    data = path.read_bytes()
    return struct.unpack(f"<{len(data) // 4}f", data)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        sys.exit(__doc__)
    llama, exo = Path(args[0]), Path(args[1])
    show_all = "--all" in sys.argv
    seen, differing = set(), 0
    print(f"{'tensor':<16} {'values':>9} {'differ':>9} {'max |d|/max|x|':>15} {'first at':>9}")
    for line in (llama / "index.tsv").read_text().splitlines():
        name = line.split("\t")[0]
        if name in seen or not (exo / f"{name}.f32").exists():
            continue
        seen.add(name)
        a, b = read(llama / f"{name}.f32"), read(exo / f"{name}.f32")
        if len(a) != len(b):
            print(f"{name:<16} sizes differ: llama.cpp {len(a)}, exo {len(b)}")
            continue
        scale = max((abs(x) for x in a if math.isfinite(x)), default=0.0) or 1.0
        diffs = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        worst = max((abs(a[i] - b[i]) for i in diffs), default=0.0) / scale
        first = str(diffs[0]) if diffs else "-"
        print(f"{name:<16} {len(a):>9} {len(diffs):>9} {worst:>15.3e} {first:>9}")
        if diffs:
            differing += 1
            if differing >= 10 and not show_all:
                print("(first ten differing tensors; --all for the rest)")
                break
    if not seen:
        sys.exit("no tensor in common: did the engine run with EXO_DUMP_DIR set?")


if __name__ == "__main__":
    main()
