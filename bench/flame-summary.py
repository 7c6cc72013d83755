#!/usr/bin/env python3
"""Summarises one folded-stack file (inferno-collapse-perf's output) for bench/flame.sh and
bench/flame-pair.sh: the share of samples with each MARK somewhere on the stack, then the hottest
frames by self samples.

Usage: bench/flame-summary.py FOLDED MARK [MARK ...]
"""
import collections
import re
import sys


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    folded, marks = sys.argv[1], sys.argv[2:]
    selfs, under, total = collections.Counter(), collections.Counter(), 0
    for line in open(folded):
        stack, n = line.rsplit(" ", 1)
        n = int(n)
        total += n
        frames = stack.split(";")
        selfs[re.sub(r"::h[0-9a-f]{16}$", "", frames[-1])] += n
        for m in marks:
            if any(m in f for f in frames):
                under[m] += n
    print(f"{total} samples (perf's sample weight)")
    print("share of samples with the frame on the stack:")
    for m in marks:
        print(f"  {100 * under[m] / max(total, 1):5.1f} %  {m}")
    print("hottest frames by self samples:")
    for f, n in selfs.most_common(40):
        print(f"  {100 * n / max(total, 1):5.1f} %  {f[:150]}")


main()
