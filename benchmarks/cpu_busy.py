"""The whole machine's CPU use between two readings of the first line of ``/proc/stat`` (every process: the
server, its front ends, the load generator), as the benchmark scripts report it beside their figures.

    a=$(head -1 /proc/stat); sleep 10; b=$(head -1 /proc/stat)
    python3 benchmarks/cpu_busy.py "$a" "$b"        # -> machine CPU busy 40% of 16 cores
"""

from __future__ import annotations

import os
import sys


def busy_percent(before: str, after: str) -> float:
    """Share of CPU time not idle (idle + iowait) between two ``cpu ...`` lines of ``/proc/stat``, in %."""
    a, b = ([int(x) for x in line.split()[1:]] for line in (before, after))
    d = [y - x for x, y in zip(a, b, strict=True)]
    return 100 * (1 - (d[3] + d[4]) / sum(d))


if __name__ == "__main__":
    print(f"machine CPU busy {busy_percent(sys.argv[1], sys.argv[2]):.0f}% of {os.cpu_count()} cores")
