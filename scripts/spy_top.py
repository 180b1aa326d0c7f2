"""Summarise a py-spy ``-f raw`` file: samples per kind of thread (with ``--threads``), the innermost frames
of each kind (where its time goes: with ``--idle``, waiting too) and the most frequent frames overall.

Usage: python scripts/spy_top.py FILE [N]   (N frames to list, default 40)
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict


def kind(thread: str) -> str:
    """``thread (123): gpufleet-decode-clip-3-0`` -> ``gpufleet-decode-clip-#``: one row per kind of thread."""
    name = thread.split(": ", 1)[-1]
    return re.sub(r"([-_]\d+)+$", "-#", name)


def main(path: str, n: int = 40) -> None:
    total, frames = 0, Counter()
    kinds: Counter[str] = Counter()
    members: dict[str, set[str]] = defaultdict(set)
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            k = int(count)
            total += k
            parts = stack.split(";")
            if parts[0].startswith("thread ("):
                kd = kind(parts[0])
                kinds[kd] += k
                members[kd].add(parts[0])
                leaves[kd][parts[-1] if len(parts) > 1 else "(no frame)"] += k
                parts = parts[1:]
            for f in set(parts):
                frames[f] += k
    print(f"{total} samples")
    for kd, k in kinds.most_common():
        m = len(members[kd])
        print(f"\n{k:7d} {100 * k / max(1, total):5.1f}%  {kd}  ({m} threads, {k / m:.0f} samples each)")
        for f, c in leaves[kd].most_common(8):
            print(f"    {c:7d} {100 * c / k:5.1f}%  {f}")
    print("\nframes, all threads:")
    for f, k in frames.most_common(n):
        print(f"{k:7d} {100 * k / max(1, total):5.1f}%  {f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40)
