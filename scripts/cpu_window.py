"""CPU cores used per process over a window, grouped by role: ``python3 scripts/cpu_window.py SECONDS SERVER_PID
LOAD_PID``. The engine is the server process itself, "server children" its front ends and process workers,
"load" the load generator and its client processes (read from /proc: utime+stime, Linux only)."""

from __future__ import annotations

import os
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def sample() -> dict[int, tuple[int, float]]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
                out[int(d)] = (int(f[1]), (int(f[11]) + int(f[12])) / TICK)  # ppid, cpu seconds
            except (OSError, IndexError, ValueError):
                pass
    return out


def role(pid: int, ppid_of: dict[int, int], server: int, load: int) -> str:
    seen, p = 0, pid
    while p > 1 and seen < 64:
        if p == server:
            return "engine" if pid == server else "server children"
        if p == load:
            return "load"
        p, seen = ppid_of.get(p, 0), seen + 1
    return "other"


if __name__ == "__main__":
    secs, server, load = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    a = sample()
    t0 = time.perf_counter()
    time.sleep(secs)
    b = sample()
    w = time.perf_counter() - t0
    ppid_of = {p: v[0] for p, v in b.items()}
    rows = sorted(((b[p][1] - a[p][1]) / w, p, role(p, ppid_of, server, load)) for p in b if p in a)
    groups: dict[str, list[float]] = {}
    for cores, _, r in rows:
        groups.setdefault(r, []).append(cores)
    print(f"CPU over {w:.1f}s (cores): " + "; ".join(
        f"{r} {sum(v):.2f} in {len(v)} procs (max {max(v):.2f})" for r, v in sorted(groups.items()) if sum(v) > 0.05))
    for cores, p, r in reversed(rows[-24:]):
        if cores > 0.02:
            print(f"  {p:>7} {r:<16} {cores:5.2f}")
