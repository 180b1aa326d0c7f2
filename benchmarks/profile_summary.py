"""Summarise a py-spy profile (``py-spy record --threads --format raw``: collapsed stacks) as the share of
samples per thread, and the top functions by own time and by time including callees, per thread.

    python3 benchmarks/profile_summary.py profile.txt [--top 30]
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

_FRAME = re.compile(r" \((?:.*/)?([^/]*)\)$")  # "fn (path/file.py:12)" -> "fn file.py:12"
_PLUMBING = ("threading.py", "concurrent/futures")  # thread start-up frames: in every stack, say nothing


def summarise(path: Path, top: int) -> str:
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    per_thread: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        thread, *frames = stack.split(";")
        total += k
        per_thread[thread] += k
        fs = [_FRAME.sub(r" \1", f) for f in frames if not any(p in f for p in _PLUMBING)]
        if fs:
            own[(thread, fs[-1])] += k
        for f in set(fs):
            incl[(thread, f)] += k
    pct = lambda k: f"{100 * k / max(total, 1):5.1f}%"  # noqa: E731
    out = [f"== {path.name}: {total} samples"]
    out += [f"  {pct(k)}  thread {t}" for t, k in per_thread.most_common(10)]
    out.append("  own time:")
    out += [f"    {pct(k)}  {t[:30]:30s} {f}" for (t, f), k in own.most_common(top)]
    out.append("  with callees:")
    out += [f"    {pct(k)}  {t[:30]:30s} {f}" for (t, f), k in incl.most_common(top * 3 // 2)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    try:
        print(summarise(args.profile, args.top))
    except OSError as exc:
        print(f"== {args.profile.name}: {exc}")


if __name__ == "__main__":
    main()
