"""The NVDEC decode-only ceiling that ``gpufleet video`` is compared with, on the benchmark's 1080p file.

Makes the file when it is missing (1920x1080 H.264, 30 fps, 600 frames of moving text, a keyframe every 30
frames), then decodes ``--inputs`` copies of it at once on one GPU, each split at keyframes into ``--segments``
parts, one NVDEC decoder thread per part, frames to CUDA tensors and nothing else. That is the decoding the
pipeline does with its defaults (8 inputs: one decoder each; 1 input: 4 segments), without the model.

``--prepare`` adds the pipeline's resize of each chunk to 224x224 in the decoding thread; ``--load N`` runs
ResNet-18 (fp16, batch 48, eager) at about N images/s on a CUDA stream of its own beside the decoders (0: as fast
as it goes): does the GPU work beside them slow the decoders down? ``GPUFLEET_NVDEC_STREAMS`` picks the
decoders' streams as in the pipeline (benchmarks/video_contention.py runs these variants in turn).
``--steal N`` balances the decoders as the pipeline does (``gpufleet video --steal-frames N``): a decoder that is
done takes the back half of the part with the most frames left; the default, 0, decodes each part on its own
thread to the end.

    python3 benchmarks/video_ceiling.py --file /tmp/video1080.mp4 --inputs 8 --segments 1
    python3 benchmarks/video_ceiling.py --inputs 8 --prepare --load 2700
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
from pathlib import Path


def make(path: Path, frames: int) -> dict:
    import av

    from gpufleet.tools import synth
    from gpufleet.video.sources import probe

    t0 = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30, options={"g": "30", "keyint_min": "30", "preset": "veryfast"})
        s.width, s.height, s.pix_fmt = 1920, 1080, "yuv420p"
        for f, _ in synth.moving_text_frames(frames, size=(1920, 1080), n_lines=4, seed=1):
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return {"file": str(path), "frames": probe(str(path)).frames, "size_mb": round(path.stat().st_size / 1e6, 2),
            "seconds": round(time.perf_counter() - t0, 1)}


class ModelLoad:
    """ResNet-18 (fp16, channels_last, eager) on batches of 48 random images, on a CUDA stream of its own in a
    thread, at about ``rate`` images/s (0: flat out), until stopped."""

    def __init__(self, gpu: int, rate: float) -> None:
        import torch
        import torchvision

        self.dev = torch.device("cuda", gpu)
        self.rate, self.images, self.seconds = rate, 0, 0.0
        self.model = torchvision.models.resnet18().to(self.dev, torch.float16).eval()
        self.model = self.model.to(memory_format=torch.channels_last)
        self.x = torch.rand(48, 3, 224, 224, device=self.dev, dtype=torch.float16)
        self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.stream = torch.cuda.Stream(self.dev)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        for _ in range(3):  # warm-up: cuDNN's choices, the allocator
            self._batch()
        self.stream.synchronize()

    def _batch(self) -> None:
        import torch

        with torch.inference_mode(), torch.cuda.stream(self.stream):
            self.model(self.x).argmax(1).cpu()  # the pipeline reads each batch's results on the host

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self.stop.is_set():
            self._batch()
            self.images += len(self.x)
            if self.rate:
                ahead = t0 + self.images / self.rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
        self.seconds = time.perf_counter() - t0

    def __enter__(self) -> ModelLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def decode_only(path: Path, inputs: int, segments: int, gpu: int, prepare: bool = False,
                load: float | None = None, steal: int = 0) -> dict:
    import torch

    from gpufleet.video.models import _resize_preparer
    from gpufleet.video.segments import Spans, split
    from gpufleet.video.sources import NvdecSource, probe

    info = probe(str(path))
    parts = [seg for _ in range(inputs) for seg in split(info, segments)]
    counts = [0] * len(parts)
    ends = [0.0] * len(parts)
    resize = _resize_preparer((224, 224), torch.uint8) if prepare else None
    spans = Spans(steal)
    first = [spans.add(i, p.start, p.stop or 0, info.keyframes) if steal else None for i, p in enumerate(parts)]

    def work(i: int) -> None:
        part, span = parts[i], first[i]
        while True:
            source = NvdecSource(info, part.start, part.stop, gpu_id=gpu, chunk=32, span=span)
            for chunk in source:
                if resize is not None:  # as the pipeline's decoding threads do
                    with torch.cuda.stream(source.stream):
                        resize([f.image for f in chunk])
                    (source.stream or torch.cuda.current_stream(gpu)).synchronize()
                counts[i] += len(chunk)
            if span is None:
                break
            span.finish()
            span = spans.steal()
            if span is None:
                break
            part = span
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(parts))]
    beside = ModelLoad(gpu, load) if load is not None else None
    torch.cuda.synchronize(gpu)
    w0, c0 = time.perf_counter(), time.process_time()
    with beside or contextlib.nullcontext():
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    torch.cuda.synchronize(gpu)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    n = sum(counts)
    # Each decoder's own time: the figure is set by the slowest, so a wide spread means uneven sharing.
    took = sorted(round(e - w0, 3) for e in ends if e)
    out = {"inputs": inputs, "decoders": len(parts), "frames": n, "seconds": round(wall, 3),
           "fps": round(n / wall, 1), "cpu_cores_used": round(cpu / wall, 2),
           "decoders_took_s": [took[0], took[-1]] if took else [], "prepare": prepare,
           "streams": os.environ.get("GPUFLEET_NVDEC_STREAMS", "") or "shared", "steal": steal,
           "stolen": spans.stolen}
    if beside is not None:
        out["load_img_s"] = round(beside.images / beside.seconds, 1) if beside.seconds else 0.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", type=Path, default=Path("/tmp/video1080.mp4"), help="the video (made when missing)")
    ap.add_argument("--frames", type=int, default=600, help="frames of a file made here (default 600)")
    ap.add_argument("--inputs", type=int, default=8, help="copies of the file decoded at once (default 8)")
    ap.add_argument("--segments", type=int, default=1, help="parts each copy is split into (default 1)")
    ap.add_argument("--gpu", type=int, default=0, help="CUDA device index (default 0)")
    ap.add_argument("--prepare", action="store_true", help="resize each chunk to 224x224 as the pipeline does")
    ap.add_argument("--load", type=float, default=None, metavar="IMG_S",
                    help="ResNet-18 beside the decoders at about this many images/s (0: flat out)")
    ap.add_argument("--steal", type=int, default=0, metavar="N",
                    help="a decoder that is done takes the back half of the longest part left (0: never)")
    ap.add_argument("--make-only", action="store_true", help="make the file and stop")
    args = ap.parse_args()
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not args.file.exists():
        out["made"] = make(args.file, args.frames)
    if not args.make_only:
        decode_only(args.file, 1, 1, args.gpu)  # warm-up: file cache, CUDA context, decoder library
        out |= decode_only(args.file, args.inputs, args.segments, args.gpu, args.prepare, args.load, args.steal)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
