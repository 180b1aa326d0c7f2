"""Does the GPU work beside NVDEC slow the decoders down? ``gpufleet video`` with 8 inputs runs below the
decode-only ceiling on hosts whose decode-only runs reach ~2,690 fps; this runs, in turn and ``--rounds``
times, the decoders alone, with the pipeline's resize in their threads, with ResNet-18 beside them (at the
pipeline's rate and flat out), both, and ``gpufleet video`` itself, while ``nvidia-smi`` samples the video and
SM clocks (they did not change: 1,545 / 1,980 MHz on an H100 in every run). Variants that take
``GPUFLEET_NVDEC_STREAMS`` (``own``) can be run by setting it around this script.

    python3 benchmarks/video_contention.py --file /tmp/video/video1080.mp4 --inputs 8 --rounds 2

Prints one JSON line per run and, at the end, each variant's median fps, its share of the decode-only median,
and the median video / SM clock and decoder utilisation while the decoders were busy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIELDS = ("clocks.video", "clocks.sm", "utilization.decoder", "utilization.gpu", "power.draw")


def variants(file: str, inputs: int) -> dict[str, list[str]]:
    """name -> command."""
    py = sys.executable
    ceiling = [py, str(HERE / "video_ceiling.py"), "--file", file, "--inputs", str(inputs), "--segments", "1"]
    video = [py, "-m", "gpufleet", "video", *([file] * inputs), "--model", "resnet18", "--gpus", "0",
             "--no-progress", "--json"]
    return {
        "decode-only": ceiling,
        "decode + resize": [*ceiling, "--prepare"],
        "decode + ResNet-18 at 2,700/s": [*ceiling, "--load", "2700"],
        "decode + ResNet-18 flat out": [*ceiling, "--load", "0"],
        "decode + resize + ResNet-18 at 2,700/s": [*ceiling, "--prepare", "--load", "2700"],
        "gpufleet video": video,
    }


def usable_fields() -> list[str]:
    """The FIELDS this driver's nvidia-smi answers."""
    ok = []
    for f in FIELDS:
        try:
            r = subprocess.run(["nvidia-smi", "-i", "0", f"--query-gpu={f}", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True)
        except OSError:  # no nvidia-smi
            return []
        if r.returncode == 0 and "not supported" not in r.stdout.lower() and "invalid" not in r.stdout.lower():
            ok.append(f)
    return ok


class Sampler:
    """``nvidia-smi -lms 50`` in the background; ``stop()`` returns the medians over samples whose decoder
    utilisation is above 0 (all samples when the driver does not report it)."""

    def __init__(self, fields: list[str]) -> None:
        self.fields, self.rows = fields, []
        self.proc = subprocess.Popen(["nvidia-smi", "-i", "0", f"--query-gpu={','.join(fields)}",
                                      "--format=csv,noheader,nounits", "-lms", "50"],
                                     stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                row = [float(x) for x in line.split(",")]
            except ValueError:  # "[N/A]" and the like
                continue
            if len(row) == len(self.fields):
                self.rows.append(row)

    def stop(self) -> dict[str, float]:
        self.proc.terminate()
        self.proc.wait()
        self.thread.join(timeout=2)
        rows = self.rows
        if "utilization.decoder" in self.fields:
            k = self.fields.index("utilization.decoder")
            rows = [r for r in rows if r[k] > 0] or rows
        out: dict[str, float] = {"samples": len(rows)}
        if rows:
            for i, f in enumerate(self.fields):
                out[f] = round(statistics.median(r[i] for r in rows), 1)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", default="/tmp/video/video1080.mp4", help="the 1080p file (made when missing)")
    ap.add_argument("--inputs", type=int, default=8, help="copies decoded at once (default 8)")
    ap.add_argument("--rounds", type=int, default=2, help="times each variant runs, in turn (default 2)")
    ap.add_argument("--only", default="", help="';'-separated variant names to run (default: all)")
    args = ap.parse_args()
    if not Path(args.file).exists():
        subprocess.run([sys.executable, str(HERE / "video_ceiling.py"), "--file", args.file, "--make-only"],
                       check=True)
    fields = usable_fields()
    todo = variants(args.file, args.inputs)
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(";")}
    runs: dict[str, list[dict]] = {k: [] for k in todo}
    for r in range(args.rounds):
        for name, cmd in todo.items():
            sampler = Sampler(fields) if fields else None
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            clocks = sampler.stop() if sampler else {}
            try:  # gpufleet video --json prints one indented object; video_ceiling.py one line
                report = json.loads(p.stdout)
            except ValueError:
                report = {"error": (p.stderr.strip().splitlines() or ["no output"])[-1]}
            row = {"variant": name, "round": r + 1, "fps": float(report.get("fps", 0.0)),
                   "cores": float(report.get("cpu_cores_used", 0.0)), "rc": p.returncode,
                   "seconds": round(time.perf_counter() - t0, 1), "clocks": clocks,
                   **{k: report[k] for k in ("load_img_s", "decoders_took_s", "error") if k in report}}
            runs[name].append(row)
            print(json.dumps(row), flush=True)
    base = statistics.median([x["fps"] for x in runs.get("decode-only", [])] or [0.0])
    for name, rows in runs.items():
        fps = statistics.median([x["fps"] for x in rows]) if rows else 0.0
        clk = {f: statistics.median([x["clocks"][f] for x in rows if f in x["clocks"]])
               for f in fields if any(f in x["clocks"] for x in rows)}
        share = f"{100 * fps / base:.0f}% of decode-only" if base else ""
        each = " / ".join(f"{x['fps']:,.0f}" for x in rows)
        print(f"video contention {name}: {fps:,.0f} fps (runs {each}) {share}; "
              + ", ".join(f"{k} {v:g}" for k, v in clk.items()), flush=True)


if __name__ == "__main__":
    main()
