"""How much a busy Python thread stretches a GPU worker's launch in the same process (the GIL "convoy").

A thread worker's launch calls into C++ many times (the JPEG decode, the stack, the copies, the graph replay),
releasing the GIL in each call and waiting to take it back after. Beside it, the engine process's IPC thread
runs Python for every request (~40 µs each). This probe runs a stand-in launch — ``--calls`` GIL-releasing
waits of ``--wait-us`` each, like those C++ calls — alone and beside a thread that runs pure Python for
``--busy-us`` at a time and then rests, busy 25/50/75% of the time, under Python's thread switch interval
(5 ms) and shorter ones. One JSON line per case: the launch's p50 and p99 in ms.

    python3 benchmarks/gil_convoy.py [--calls 30] [--wait-us 50] [--busy-us 300] [--launches 100]

On the 2-core development VM (2026-12-07), with the defaults: the stand-in launch took 3.4 ms alone and 4.1 /
5.1 / 7.1 ms (p50) beside a thread busy 25 / 50 / 75% of the time; switch intervals of 1 and 0.5 ms did not
shorten it. Worker processes (``--backend process``) each have a GIL of their own.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np

from gpufleet.engine.stats import percentiles


def launch(calls: int, wait_s: float) -> float:
    """One stand-in launch: ``calls`` GIL-releasing waits; returns its wall time in seconds."""
    t = time.perf_counter()
    for _ in range(calls):
        time.sleep(wait_s)
    return time.perf_counter() - t


def hog(stop: threading.Event, busy_s: float, rest_s: float) -> None:
    """Pure Python for ``busy_s`` (holding the GIL but at switch-interval requests), then sleep ``rest_s``."""
    while not stop.is_set():
        end = time.perf_counter() + busy_s
        while time.perf_counter() < end:
            pass
        time.sleep(rest_s)


def measure(calls: int, wait_s: float, busy_s: float, share: float, launches: int) -> dict:
    stop = threading.Event()
    th = None
    if share > 0:
        rest_s = busy_s * (1 - share) / share
        th = threading.Thread(target=hog, args=(stop, busy_s, rest_s), daemon=True)
        th.start()
        time.sleep(0.05)
    try:
        times = np.array([launch(calls, wait_s) for _ in range(launches)])
    finally:
        stop.set()
        if th is not None:
            th.join()
    p = percentiles(times, (50, 99))
    return {"busy_share": share, "launch_ms_p50": round(p["p50_ms"], 2), "launch_ms_p99": round(p["p99_ms"], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=30, help="GIL-releasing calls per launch")
    ap.add_argument("--wait-us", type=float, default=50, help="each call's wait (µs)")
    ap.add_argument("--busy-us", type=float, default=300, help="the busy thread's stretch of pure Python (µs)")
    ap.add_argument("--launches", type=int, default=100)
    ap.add_argument("--switch-ms", default="5,1,0.5", help="thread switch intervals to try (ms)")
    args = ap.parse_args(argv)
    for si in (float(x) for x in args.switch_ms.split(",")):
        sys.setswitchinterval(si / 1e3)
        for share in (0.0, 0.25, 0.5, 0.75):
            row = {"switch_ms": si, "calls": args.calls, "wait_us": args.wait_us, "busy_us": args.busy_us,
                   **measure(args.calls, args.wait_us / 1e6, args.busy_us / 1e6, share, args.launches)}
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
