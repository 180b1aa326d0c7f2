"""Print the short summary of a ``benchmarks/gpu_run.sh`` results folder (its raw JSON files), old beside new.

Reads only JSON (no gpufleet import), so it reports an older package's results the same way:
  pool_<label>.json                      gpufleet bench --json
  serve_<label>_<config>_c<N>.json       gpufleet load --json (closed loop at concurrency N)
  burst_<label>_<config>_<N>.json        gpufleet load --burst N --json
  stats_<label>_<config>_{before,c256}.json  the server's /stats on either side of the c=256 run
  video_ceiling_<n>[_<variant>][_r<k>].json  benchmarks/video_ceiling.py (decode-only, n inputs; round k)
  video_<n>[_<variant>][_r<k>].json      gpufleet video --json (n inputs); rounds are summarised by their median
  video2p_[ceiling_]<n>_<one|a|b>_r<k>.json  n inputs in one process, or in two (a, b) started together

    python3 benchmarks/summarize.py /tmp/work
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def _load(p: Path) -> dict | None:
    """The JSON document of a file, also when log lines precede it (from the first line that starts with "{")."""
    try:
        lines = p.read_text().splitlines()
    except OSError:
        return None
    for i, line in enumerate(lines):
        if line.startswith("{"):
            try:
                return json.loads("\n".join(lines[i:]))
            except ValueError:
                continue
    return None


def _pool(d: Path) -> list[str]:
    lines = []
    for p in sorted(d.glob("pool_*.json")):
        label = p.stem.removeprefix("pool_")
        r = _load(p)
        if r is None:
            lines.append(f"pool overhead [{label}]: no result (see {p.stem}.err)")
            continue
        for row in r["rows"]:
            ceiling = row.get("raw_graph") or row.get("raw") or {}
            one = (row.get("scaling") or [row.get("pool", {})])[0]
            vs = f"{one['items_s'] / ceiling['items_s']:.1%}" if ceiling and one.get("items_s") else "-"
            lines.append(
                f"pool overhead [{label}] {r['model']} {r['precision']} bs {row['batch_size']}: "
                f"pool {one.get('items_s', 0):,.0f} img/s (p50 {one.get('p50_ms', 0):.1f} "
                f"p99 {one.get('p99_ms', 0):.1f} ms) = {vs} of the ceiling; "
                f"raw eager {row.get('raw', {}).get('items_s', 0):,.0f}, "
                f"raw CUDA graph {row.get('raw_graph', {}).get('items_s', 0):,.0f} img/s")
            for s in (row.get("scaling") or [])[1:]:
                lines.append(f"  {s['devices']} devices: {s['items_s']:,.0f} img/s ({s['speedup']:.2f}x), "
                             f"p99 {s['p99_ms']:.1f} ms")
    return lines


def _serve(d: Path) -> list[str]:
    lines = []
    for p in sorted(d.glob("serve_*_c*.json"), key=lambda p: (p.stem.rsplit("_", 1)[0], len(p.stem), p.stem)):
        m = re.fullmatch(r"serve_(.+)_c(\d+)", p.stem)
        r = _load(p)
        if m is None:
            continue
        if r is None:
            lines.append(f"JPEG serving [{m[1]}] c={m[2]}: no result")
            continue
        lat = r["latency"]
        cpu = r.get("client_cpu", {}).get("cores")
        lines.append(f"JPEG serving [{m[1]}] c={m[2]}: {r['rps']:,.0f} req/s, p50 {lat['p50_ms']:.1f} ms, "
                     f"p99 {lat['p99_ms']:.1f} ms, errors {r['errors'] or 0}"
                     + (f", client CPU {cpu} cores" if cpu is not None else ""))
    for p in sorted(d.glob("stats_*_c256.json")):
        tag = p.stem.removeprefix("stats_").removesuffix("_c256")
        lines += _engine_during(tag, _load(d / f"stats_{tag}_before.json"), _load(p))
    for p in sorted(d.glob("burst_*.json")):
        m = re.fullmatch(r"burst_(.+)_(\d+)", p.stem)
        r = _load(p)
        if m is None or r is None:
            continue
        s = r.get("batch_statistics") or {}
        lines.append(f"burst [{m[1]}] {m[2]}: {r['total_duration_s']:.3f} s, ok {r['successful']}/{r['burst']}, "
                     f"p99 {r['latency']['p99_ms']:.1f} ms, batches {s.get('total_batches')} "
                     f"(avg {s.get('avg_batch_size')})")
    return lines


def _engine_during(tag: str, before: dict | None, after: dict | None) -> list[str]:
    """What the engine did over the c=256 run: the share of it its loops waited for work (``idle_s``, thread
    backend), batches, and its stage percentiles (the windows then hold that run's samples)."""
    if before is None or after is None:
        return []
    span = after["uptime_s"] - before["uptime_s"]
    batches = after["total_batches"] - before["total_batches"]
    items = sum(g["total_requests"] for g in after["per_gpu_stats"]) - sum(
        g["total_requests"] for g in before["per_gpu_stats"])
    # A device's idle_s sums its workers' loops (--workers-per-device): its share is per loop.
    idle = [(a.get("idle_s"), b.get("idle_s"), a.get("workers") or 1)
            for a, b in zip(after["per_gpu_stats"], before["per_gpu_stats"])]
    idle_txt = ", ".join(f"{(a - b) / span / n:.0%}" for a, b, n in idle if a is not None and b is not None) \
        if span else ""
    st = after.get("stages", {})
    names = ("queue_wait", "launch", "decode", "decode_cpu", "collect", "compute", "predict", "e2e")
    stages = ", ".join(f"{k} {st[k]['p50_ms']:.2f}/{st[k]['p99_ms']:.2f}" for k in names if k in st)
    return [f"engine [{tag}] over c=256: {batches:,} batches, avg {items / batches if batches else 0:.1f} items; "
            f"loop idle {idle_txt or '-'} of {span:.1f} s; stages p50/p99 ms: {stages}"]


def _video(d: Path) -> list[str]:
    """Ceilings and pipeline runs; files ending ``_r<k>`` are rounds of one figure, summarised by their median."""
    ceiling_runs: dict[tuple[str, str], list[dict]] = {}
    runs: dict[tuple[str, str], list[dict | None]] = {}
    for p in sorted(d.glob("video_*.json")):
        stem = re.sub(r"_r\d+$", "", p.stem)  # a round of a figure taken several times
        m = re.fullmatch(r"video_ceiling_(\d+)(?:_(.+))?", stem)
        if m is not None:
            c = _load(p)
            if c and "fps" in c:  # a variant's ceiling (e.g. 8_streams) is listed; runs compare with the plain one
                ceiling_runs.setdefault((m[1], m[2] or ""), []).append(c)
            continue
        m = re.fullmatch(r"video_(\d+)(?:_(.+))?", stem)
        if m is not None:
            r = _load(p)
            runs.setdefault((m[1], m[2] or "defaults"), []).append(r if r and "fps" in r else None)
    lines, ceiling = [], {}
    for (n, variant), cs in sorted(ceiling_runs.items()):
        fps = sorted(c["fps"] for c in cs)
        if not variant:
            ceiling[n] = statistics.median(fps)
        took = [t for c in cs for t in c.get("decoders_took_s", [])]
        spread = f", decoders took {min(took):.2f}–{max(took):.2f} s" if took else ""
        label = f" [{variant}]" if variant else ""
        lines.append(f"video decode-only ceiling{label}, {n} input(s) on {cs[0]['decoders']} NVDEC decoders: "
                     f"{statistics.median(fps):,.0f} fps (median of {_listed(fps)}), {cs[0]['cpu_cores_used']} "
                     f"cores{spread}")
    for (n, variant), rs in sorted(runs.items()):
        ok = [r for r in rs if r is not None]
        if not ok:
            lines.append(f"video 1080p, {n} input(s) [{variant}]: no result (see its .err)")
            continue
        fps = sorted(r["fps"] for r in ok)
        med = statistics.median(fps)
        vs = f" = {med / ceiling[n]:.0%} of decode-only" if ceiling.get(n) else ""
        # Each input's own time: the run's figure is set by the slowest, so a wide spread means uneven sharing.
        spans = [x["elapsed_s"] for r in ok for x in r.get("inputs", []) if x.get("elapsed_s")]
        spread = f", inputs took {min(spans):.2f}–{max(spans):.2f} s" if len(spans) > 1 else ""
        lines.append(f"video 1080p, {n} input(s) [{variant}]: {med:,.0f} fps (median of {_listed(fps)}){vs}, "
                     f"{ok[0]['cpu_cores_used']} cores, avg batch {ok[0].get('avg_batch_size')}{spread}, "
                     f"{len(rs) - len(ok)} failed")
    return lines


def _video_split(d: Path) -> list[str]:
    """``video2p``: n inputs as one process beside two processes of n/2 started together (their rates added);
    medians over rounds."""
    rounds: dict[tuple[str, str, str], dict[str, float]] = {}  # (what, inputs, round) -> fps of one, a, b
    for p in sorted(d.glob("video2p_*.json")):
        m = re.fullmatch(r"video2p_(ceiling_)?(\d+)_(one|a|b)_r(\d+)", p.stem)
        r = _load(p) if m is not None else None
        if m is not None and r and "fps" in r:
            rounds.setdefault(("decode-only" if m[1] else "gpufleet video", m[2], m[4]), {})[m[3]] = r["fps"]
    figures: dict[tuple[str, str], dict[str, list[float]]] = {}
    for (what, n, _), parts in rounds.items():
        fig = figures.setdefault((what, n), {"one": [], "two": []})
        if "one" in parts:
            fig["one"].append(parts["one"])
        if "a" in parts and "b" in parts:
            fig["two"].append(parts["a"] + parts["b"])
    none = not figures and any(d.glob("video2p_*.json"))
    lines = ["video 1080p split: no result (see the .err files)"] if none else []
    for (what, n), fig in sorted(figures.items()):
        one, two = sorted(fig["one"]), sorted(fig["two"])
        txt = [f"{label} {statistics.median(v):,.0f} fps (median of {_listed(v)})"
               for label, v in (("one process", one), ("two processes", two)) if v]
        lines.append(f"video 1080p split, {n} inputs, {what}: " + "; ".join(txt or ["no result (see the .err files)"]))
    return lines


def _listed(values: list[float]) -> str:
    return " / ".join(f"{v:,.0f}" for v in values)


def _tune(d: Path) -> list[str]:
    r = _load(d / "tune.json")
    if r is None:
        return ["tune: no result (see tune.err)"] if (d / "tune.err").exists() else []
    lines = [f"tune {r['model']} p99<={r['slo_p99_ms']} ms: {len(r['trials'])} trials in {r['elapsed_s']} s"]
    for t in r["trials"]:
        c = t["config"]
        ms = " ".join(f"c{m['concurrency']}={m['rps']:,.0f}/{m['p99_ms']:.0f}ms{'' if m['meets'] else '!'}"
                      for m in t["measurements"])
        lines.append(f"  bs {c['max_batch_size']} wait {c['max_wait_ms']} {c['workers_per_device']}x{c['backend']} "
                     f"http {c['http_workers']}: {ms or t['error']} (start {t['startup_s']} s)")
    lines += [f"  not tried: {n}" for n in r["not_tried"]]
    lines.append(f"  chosen: {r['serve']}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="the runner's results folder")
    d = ap.parse_args().folder
    print("\n".join(_pool(d) + _serve(d) + _video(d) + _video_split(d) + _tune(d)))


if __name__ == "__main__":
    main()
