"""Does a GPU JPEG decode overlap a running model? W3's serving loop decodes the next batch while the GPU runs
the previous one; this measures, without the engine, the decode of one batch of W3's JPEGs (224x224) alone and
beside ResNet-50 fp16 (batch 64) kept busy on another thread and stream, replayed as a CUDA graph (as the pool
runs it) and as the eager module:

- torchvision's ``decode_jpeg`` on the GPU (nvJPEG, its own low-priority stream, a process-wide lock);
- nvImageCodec (``nvidia-nvimgcodec-cu13``), when importable, on a stream we choose: default and high priority,
  hardware decoder and CUDA decoder.

One JSON line per decoder: per-call ms (p50) alone and beside the model, and the model's images/s meanwhile.
Then the serving loop without the pool (decode batch N+1, stack, replay, wait for batch N), one JSON line per
way of doing it: decoding with the compute stream current and stacking on the default stream (what the
classifier's launch does), stacking on the compute stream, decoding and stacking on a side stream, each with
the graph or the eager module, and without decoding (the model's own ceiling in this loop).

    python3 benchmarks/decode_overlap.py --seconds 2
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable

import numpy as np

from gpufleet.engine.stats import percentiles


def w3_jpegs(n: int) -> list[bytes]:
    """The JPEGs of ``gpufleet load --payload jpeg224``."""
    from gpufleet.tools.load import make_payloads

    return [p.raw for p in make_payloads("jpeg224", n)]


def graph_model(dev, batch: int):  # noqa: ANN001, ANN201
    import torch
    import torchvision.models as tvm

    net = tvm.resnet50().to(dev, torch.float16, memory_format=torch.channels_last).eval()
    x = torch.randn(batch, 3, 224, 224, device=dev, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    s = torch.cuda.Stream(dev)
    with torch.cuda.stream(s), torch.inference_mode():
        for _ in range(3):
            net(x)
        s.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s):
            net(x)
    return g, x, net


class Busy:
    """Runs ``step`` (the graph's replay or the eager module) on a stream of its own, two in flight, until
    stopped."""

    def __init__(self, step: Callable[[], None], dev, batch: int) -> None:  # noqa: ANN001
        import torch

        self.step, self.batch, self.n = step, batch, 0
        self.stream = torch.cuda.Stream(dev)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        import torch

        events: list = []
        with torch.cuda.stream(self.stream):
            while not self.stop.is_set():
                self.step()
                e = torch.cuda.Event()
                e.record()
                events.append(e)
                if len(events) >= 2:
                    events.pop(0).synchronize()
                    self.n += self.batch
        self.stream.synchronize()

    def __enter__(self) -> Busy:
        self.thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def p50_ms(samples: list[float]) -> float:
    """The median of ``samples`` (seconds) in ms, rounded for the JSON lines."""
    return round(percentiles(np.array(samples), (50,))["p50_ms"], 2)


def timed_cpu(fn: Callable[[], None], seconds: float) -> tuple[list[float], list[float], float]:
    """Wall and calling-thread CPU seconds of each call of ``fn`` for ``seconds`` (after one untimed call), and
    the whole process's CPU seconds over them (the library's own threads too)."""
    fn()
    wall: list[float] = []
    cpu: list[float] = []
    p0 = time.process_time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t, c = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    return wall, cpu, time.process_time() - p0


def timed(fn: Callable[[], None], seconds: float) -> list[float]:
    """Wall seconds of each call of ``fn`` for ``seconds`` (after one untimed call)."""
    return timed_cpu(fn, seconds)[0]


def measure(name: str, fn: Callable[[], None], models: dict[str, Callable[[], None]], dev, batch: int,  # noqa: ANN001
            seconds: float) -> dict:
    """``fn``'s per-call time alone, then beside each of ``models`` (name: its step, batch 64) kept busy."""
    alone = timed(fn, seconds)
    out = {"decoder": name, "batch": batch, "alone_ms_p50": p50_ms(alone),
           "alone_img_per_s": round(batch * len(alone) / sum(alone))}
    for model, step in models.items():
        with Busy(step, dev, 64) as busy:
            n0, t0 = busy.n, time.perf_counter()
            beside = timed(fn, seconds)
            model_rate = (busy.n - n0) / (time.perf_counter() - t0)
        out[f"beside_{model}"] = {"ms_p50": p50_ms(beside), "img_per_s": round(batch * len(beside) / sum(beside)),
                                  "model_img_per_s_meanwhile": round(model_rate)}
    return out


def serving_loop(name: str, decode: Callable, step: Callable, x, dev, seconds: float,  # noqa: ANN001
                 stack_on: str = "compute", side=None, sizes: tuple[int, ...] = (64,)) -> dict:  # noqa: ANN001
    """The pool's loop without the pool: decode batch N+1 (``decode(compute)`` returns images usable on the
    compute stream, or on ``side``), stack it, copy it into the model's input ``x``, run ``step`` (the graph's
    replay or the eager module), then wait for batch N. ``stack_on``: ``compute`` (the stack queues behind
    batch N), ``default`` (as the classifier's launch does: the thread's default stream waits for the compute
    stream, stacks, and the compute stream waits for it) or ``side`` (stacked on ``side``, where the images were
    decoded). ``sizes``: the batch sizes, in turn (the server's batches vary in size). Images/s and the decode's
    host time per batch."""
    import torch

    compute = torch.cuda.Stream(dev)
    prev, n, dec, last = None, 0, [], 0
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        k = sizes[i % len(sizes)]
        i += 1
        t = time.perf_counter()
        imgs = decode(compute, k)
        dec.append(time.perf_counter() - t)
        if stack_on == "compute":
            with torch.cuda.stream(compute):
                stacked = torch.stack(imgs)
        else:
            s = torch.cuda.default_stream(dev) if stack_on == "default" else side
            if stack_on == "default":
                s.wait_stream(compute)
            with torch.cuda.stream(s):
                stacked = torch.stack(imgs)
            compute.wait_stream(s)
            stacked.record_stream(compute)
        with torch.cuda.stream(compute):
            x[:k].copy_(stacked)
            step()
            done = torch.cuda.Event()
            done.record()
        if prev is not None:
            prev.synchronize()
            n += last
        prev, last = done, k
    prev.synchronize()
    return {"loop": name, "stack_on": stack_on, "sizes": f"{min(sizes)}-{max(sizes)}", "img_per_s": round(n / seconds),
            "decode_ms_p50": p50_ms(dec)}


def probe_args(doc: str) -> argparse.Namespace:
    """The JPEG probes' command line: ``--seconds`` per measurement, ``--batch`` JPEGs per call, ``--gpu``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--gpu", type=int, default=0)
    return ap.parse_args()


def main() -> None:
    args = probe_args(__doc__)
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    dev = torch.device(f"cuda:{args.gpu}")
    jpegs = w3_jpegs(8)
    data = [jpegs[i % len(jpegs)] for i in range(args.batch)]
    graph, x, net = graph_model(dev, 64)
    t = timed(lambda: (graph.replay(), torch.cuda.synchronize(dev)), args.seconds)
    print(json.dumps({"model": "resnet50 fp16 graph", "batch": 64, "replay_ms_p50": p50_ms(t)}),
          flush=True)

    tensors = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in data]
    imgs64 = list(decode_jpeg(tensors[:64], mode=ImageReadMode.RGB, device=dev))
    tv_stream = torch.cuda.Stream(dev)

    def tv() -> None:
        with torch.cuda.stream(tv_stream):
            decode_jpeg(tensors, mode=ImageReadMode.RGB, device=dev)
        tv_stream.synchronize()

    def eager() -> None:
        with torch.inference_mode():
            net(x)

    models = {"graph": graph.replay, "eager": eager}
    print(json.dumps(measure("torchvision decode_jpeg", tv, models, dev, args.batch, args.seconds)), flush=True)

    def tv_on(compute, k: int) -> list:  # noqa: ANN001  # as the classifier's launch: the compute stream is current
        with torch.cuda.stream(compute):
            return decode_jpeg(tensors[:k], mode=ImageReadMode.RGB, device=dev)

    def tv_side(compute, k: int) -> list:  # noqa: ANN001  # stacked on tv_stream next (stack_on="side")
        with torch.cuda.stream(tv_stream):
            return decode_jpeg(tensors[:k], mode=ImageReadMode.RGB, device=dev)

    loops = (("torchvision decoding with the compute stream current, as the classifier", tv_on, graph.replay,
              "default"),
             ("same, stacked on the compute stream", tv_on, graph.replay, "compute"),
             ("torchvision decoding and stacking on a side stream", tv_side, graph.replay, "side"),
             ("same, eager model", tv_side, eager, "side"),
             ("torchvision as the classifier, eager model", tv_on, eager, "default"),
             ("no decode (graph)", lambda c, k: imgs64[:k], graph.replay, "compute"),
             ("no decode (eager)", lambda c, k: imgs64[:k], eager, "compute"))
    for name, fn, step, stack_on in loops:
        print(json.dumps(serving_loop(name, fn, step, x, dev, args.seconds, stack_on, tv_stream)), flush=True)
    # Batch sizes that change from one batch to the next, as the server's do (63.4 of 64 on average at c=256):
    # does the decoder's per-call set-up for a new size cost more than the decode?
    varying = (64, 61, 64, 58, 63, 64, 60, 62)
    for name, fn, stack_on in (("torchvision as the classifier", tv_on, "default"),
                               ("torchvision on a side stream", tv_side, "side")):
        print(json.dumps(serving_loop(name, fn, graph.replay, x, dev, args.seconds, stack_on, tv_stream, varying)),
              flush=True)
    try:
        from nvidia import nvimgcodec
    except ImportError as exc:
        print(json.dumps({"decoder": "nvimgcodec", "error": f"not importable: {exc}"}), flush=True)
        return
    for prio in (0, -5):
        s = torch.cuda.Stream(dev, priority=prio)
        try:
            hw = nvimgcodec.Decoder(device_id=args.gpu,
                                    backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)])

            def nv_loop(compute, k: int, hw=hw, s=s) -> list:  # noqa: ANN001  # stacked on s next (side)
                imgs = hw.decode(data[:k], cuda_stream=s.cuda_stream)
                return [torch.as_tensor(i, device=dev).permute(2, 0, 1) for i in imgs]

            out = serving_loop(f"nvimgcodec HW_GPU_ONLY priority {prio}", nv_loop, graph.replay, x, dev,
                               args.seconds, "side", s)
        except Exception as exc:  # noqa: BLE001
            out = {"loop": f"nvimgcodec priority {prio}", "error": repr(exc)}
        print(json.dumps(out), flush=True)
    for kind in ("HW_GPU_ONLY", "GPU_ONLY"):
        try:
            dec = nvimgcodec.Decoder(device_id=args.gpu,
                                     backends=[nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, kind))])
        except Exception as exc:  # noqa: BLE001
            print(json.dumps({"decoder": f"nvimgcodec {kind}", "error": repr(exc)}), flush=True)
            continue
        for prio in (0, -5):
            s = torch.cuda.Stream(dev, priority=prio)

            def nv(dec=dec, s=s) -> None:  # noqa: ANN001
                imgs = dec.decode(data, cuda_stream=s.cuda_stream)
                assert all(i is not None for i in imgs)
                s.synchronize()

            try:
                out = measure(f"nvimgcodec {kind} priority {prio}", nv, {"graph": graph.replay}, dev, args.batch,
                              args.seconds)
            except Exception as exc:  # noqa: BLE001
                out = {"decoder": f"nvimgcodec {kind} priority {prio}", "error": repr(exc)}
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
