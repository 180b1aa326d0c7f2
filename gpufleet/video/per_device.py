"""A video job as one process per device, each running its share of the inputs.

Decoding many NVDEC streams is bound by one process's Python threads (on 2x H200, 16 decoders in one process
gave 3,118 fps where one GPU's 8 gave 2,343), so with several GPUs and several inputs :func:`gpufleet.video.run`
starts one worker process per device: inputs are dealt out round-robin, every process writes its own
streams' JSONL and videos, and reports frame counts, stream ends and its summary to the parent, which draws
the progress bars and merges the summaries (fps over the union of the timed windows, CPU of every process).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any

from gpufleet.errors import ConfigError, GpufleetError
from gpufleet.video.config import VideoConfig
from gpufleet.video.job import StreamEnd
from gpufleet.video.local import run_here
from gpufleet.video.progress import Progress, want_progress
from gpufleet.video.summary import summary_record

__all__ = ["plan", "run_shares"]

log = logging.getLogger(__name__)

Share = tuple[str, VideoConfig, list[int]]  # device label, the worker's config, indices of its inputs
_FLUSH_S = 0.1  # how often a worker reports its frame counts
_INTERRUPT_GRACE_S = 30.0  # after Ctrl-C, how long the workers get to close their files
_START_WAIT_S = 600.0  # the longest a set-up worker waits for the others (model downloads, graph capture)


def plan(specs: Sequence[str], cfg: VideoConfig, on_frame: Callable | None) -> list[Share] | None:
    """The worker processes to start (one per device that gets an input), or ``None`` to run in this process.

    ``process_per_gpu=None`` splits only over two or more CUDA devices and inputs, with no ``on_frame`` and a
    picklable model; ``True`` splits over CPU devices too and says why when it cannot.
    """
    want = cfg.process_per_gpu
    if want is False or len(specs) < 2:
        return None
    from gpufleet.devices import select

    devices = select(cfg.devices, cpu_devices=cfg.cpu_devices)
    if len(devices) < 2 or (want is None and not all(d.is_cuda for d in devices)):
        return None
    if on_frame is not None:
        if want:
            raise ConfigError("process_per_gpu cannot call on_frame: the frames stay in the worker processes; "
                              "use on_stream_end, or process_per_gpu=False")
        return None
    try:
        pickle.dumps(cfg.model)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means: run here
        if want:
            raise ConfigError(f"process_per_gpu needs a model that pickles (a name, a class or a module-level "
                              f"object): {type(exc).__name__}: {exc}") from None
        log.info("video: the model does not pickle (%s); all devices run in this process", exc)
        return None
    used = devices[:len(specs)]
    shares: list[Share] = []
    for k, d in enumerate(used):
        one = replace(cfg, devices=str(d.index), cpu_devices=None) if d.is_cuda else \
            replace(cfg, devices="cpu", cpu_devices=1)
        shares.append((d.label, replace(one, progress=False, process_per_gpu=False),
                       list(range(k, len(specs), len(used)))))
    return shares


def _worker(conn: Connection, go: Any, specs: list[str], names: list[str], cfg: VideoConfig,
            jsonl_paths: dict[str, str | None], out_paths: dict[str, str | None]) -> None:
    """Runs in the worker process: :func:`run_here` on its inputs, reporting to the parent over ``conn``;
    decoding starts once every worker is set up (``go``), so the timed windows line up."""
    counts: Counter[str] = Counter()
    last = [time.monotonic()]

    def flush() -> None:
        if counts:
            conn.send(("frames", dict(counts)))
            counts.clear()
        last[0] = time.monotonic()

    def on_frame(r: Any) -> None:
        counts[r.stream] += 1
        if time.monotonic() - last[0] >= _FLUSH_S:
            flush()

    def on_end(e: StreamEnd) -> None:
        flush()
        conn.send(("end", e))

    def on_start(totals: dict[str, int | None]) -> None:
        conn.send(("ready", totals))  # the files are probed here: the parent sizes its progress bars with it
        go.wait(_START_WAIT_S)
        conn.send(("start", time.time()))

    try:
        summary = run_here(specs, names, cfg, jsonl_paths, out_paths, on_frame, on_end, on_start=on_start)
        # Interrupted or not, the outputs are closed: a late Ctrl-C (the terminal's, or the one the parent passes
        # on) must not turn this summary into an error.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        flush()
        conn.send(("summary", summary))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        try:
            conn.send(("error", f"{exc}" if isinstance(exc, GpufleetError) else f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        conn.close()


def run_shares(specs: Sequence[str], names: Sequence[str], cfg: VideoConfig, shares: list[Share],
               jsonl_paths: dict[str, str | None], out_paths: dict[str, str | None],
               on_stream_end: Callable[[StreamEnd], None] | None) -> dict[str, Any]:
    """Start one worker process per share, follow them and return the merged summary."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    workers: list[dict[str, Any]] = []
    for label, wcfg, idx in shares:
        mine = [names[i] for i in idx]
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, name=f"gpufleet-video-{label}", daemon=True,
                           args=(send, go, [specs[i] for i in idx], mine, wcfg, {n: jsonl_paths[n] for n in mine},
                                 {n: out_paths[n] for n in mine}))
        proc.start()
        send.close()
        workers.append({"label": label, "proc": proc, "conn": recv, "names": mine, "start": None,
                        "ready": False, "summary": None, "error": None})
    ends: dict[str, StreamEnd] = {}
    interrupted = False
    with Progress(want_progress(cfg.progress)) as progress:
        live = {id(w["conn"]): w for w in workers}
        deadline: float | None = None
        while live:
            try:
                ready = wait([w["conn"] for w in live.values()], timeout=0.5)
                for conn in ready:
                    w = live[id(conn)]
                    try:
                        kind, value = conn.recv()
                    except (EOFError, OSError):
                        del live[id(conn)]
                        kind, value = "gone", None
                    if kind in ("ready", "gone", "error"):  # all set up (or gone): all start decoding together
                        w["ready"] = True
                        if all(x["ready"] for x in workers):
                            go.set()
                    if kind == "ready":
                        for stream, total in value.items():
                            progress.add(stream, total)
                    elif kind == "frames":
                        for stream, n in value.items():
                            progress.advance(stream, n)
                    elif kind == "start":
                        w["start"] = value
                    elif kind == "end":
                        ends[value.stream] = value
                        progress.finish(value.stream, value.status if value.status != "failed" else "[red]failed")
                        if on_stream_end is not None:
                            on_stream_end(value)
                    elif kind == "summary":
                        w["summary"] = value
                    elif kind == "error":
                        w["error"] = value
                if deadline is not None and time.monotonic() > deadline:
                    log.warning("video: workers still running %.0f s after the interrupt; stopping them",
                                _INTERRUPT_GRACE_S)
                    break
            except KeyboardInterrupt:
                if interrupted:  # a second Ctrl-C: stop waiting
                    break
                interrupted = True
                log.warning("interrupted: the worker processes are closing their outputs")
                deadline = time.monotonic() + _INTERRUPT_GRACE_S
                go.set()
                for w in live.values():  # a Ctrl-C from a terminal reached them already; from kill, not
                    _signal(w["proc"], signal.SIGINT)
    for w in workers:
        w["proc"].join(timeout=5.0)
        if w["proc"].is_alive():
            w["proc"].terminate()
            w["proc"].join(timeout=5.0)
        w["conn"].close()
    if all(w["summary"] is None for w in workers) and all(w["error"] for w in workers):
        raise GpufleetError(workers[0]["error"])
    return _merge(specs, names, workers, ends, time.process_time() - cpu0, time.perf_counter() - wall0,
                  interrupted)


def _signal(proc: Any, sig: int) -> None:
    try:
        if proc.pid is not None and proc.is_alive():
            os.kill(proc.pid, sig)
    except OSError:
        pass


def _merge(specs: Sequence[str], names: Sequence[str], workers: list[dict[str, Any]], ends: dict[str, StreamEnd],
           parent_cpu_s: float, wall: float, interrupted: bool) -> dict[str, Any]:
    """One summary, shaped as :func:`gpufleet.video.run`'s, from the workers' summaries."""
    rows: dict[str, dict[str, Any]] = {}
    windows: list[tuple[float, float]] = []
    cpu_s = parent_cpu_s
    for w in workers:
        s = w["summary"]
        if s is not None:
            rows.update({r["stream"]: r for r in s["inputs"]})
            cpu_s += s["cpu_s"]
            interrupted = interrupted or s["interrupted"]
            if w["start"] is not None:
                windows.append((w["start"], w["start"] + s["elapsed_s"]))
            continue
        code = w["proc"].exitcode
        why = w["error"] or f"the worker process for {w['label']} exited with code {code}"
        for n in w["names"]:
            e = ends.get(n)
            rows[n] = {"stream": n, "input": specs[names.index(n)], "status": "failed", "error": why,
                       "frames": e.frames if e else 0, "elapsed_s": round(e.elapsed_s, 3) if e else 0.0,
                       "fps": 0.0, "decoder": e.decoder if e else "", "decoder_note": "", "segments": 0,
                       "reconnects": 0, "jsonl": None, "out": None, "encoder": None, "encoder_note": ""}
    done = [w["summary"] for w in workers if w["summary"] is not None]
    first = min((s for s, _ in windows), default=0.0)
    elapsed = max(e for _, e in windows) - first if windows else wall
    per_process = [{"device": w["label"], "frames": w["summary"]["frames"], "elapsed_s": w["summary"]["elapsed_s"],
                    "fps": w["summary"]["fps"], "cpu_cores_used": w["summary"]["cpu_cores_used"],
                    "started_s": round(w["start"] - first, 3) if w["start"] is not None else None}
                   for w in workers if w["summary"] is not None]
    per_device = [g for s in done for g in s["per_device"]]
    requests = sum(g["total_requests"] for g in per_device)
    batches = sum(g["total_batches"] for g in per_device)
    return summary_record(
        rows=[rows[n] for n in names], elapsed=elapsed, wall=wall, cpu_s=cpu_s, interrupted=interrupted,
        processes=len(workers), model=done[0]["model"] if done else "",
        devices=[d for s in done for d in s["devices"]], encoders={e for s in done for e in s["encoders"]},
        batches=batches, avg_batch_size=round(requests / batches, 3) if batches else 0.0, per_device=per_device,
        per_process=per_process,
        stages={k: sum(s["stages_s"].get(k, 0.0) for s in done) for k in (done[0]["stages_s"] if done else {})})
