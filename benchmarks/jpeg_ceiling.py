"""JPEG ceilings of the served-JPEG workload (W3) on one GPU, without HTTP: what ``gpufleet serve resnet50``
can reach at most once requests are parsed.

On the JPEGs ``gpufleet load --payload jpeg224`` sends (224x224), one JSON line each:

- ``decode``: torchvision's batched ``decode_jpeg`` on the GPU (nvJPEG), batches of ``--batch``, on 1 and 2
  threads (each with its own CUDA stream): images/s and host CPU µs per image (a decode beside a running
  model: ``decode_overlap.py``).
- ``engine``: ``Pool(ImageClassifier("resnet50"))`` (fp16, CUDA graphs) fed JPEG bytes at ``--batch``, as
  ``GPUFLEET_DECODE_AHEAD`` sets it: decoding in ``launch`` (``0``, the default), one batch ahead on the
  worker's second thread and stream (``1``) and as they come on that thread (``eager``), images/s.
- ``model``: the same pool fed decoded uint8 images (no decoding at all): the model's ceiling through the pool.

    python3 benchmarks/jpeg_ceiling.py --seconds 3 > /tmp/out/jpeg_ceiling.jsonl
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import threading
import time


def w3_jpegs(n: int) -> list[bytes]:
    from gpufleet.tools.load import make_payloads

    return [base64.b64decode(json.loads(p.body)["image"]) for p in make_payloads("jpeg224", n)]


def decode(jpegs: list[bytes], threads: int, batch: int, seconds: float, gpu: int) -> dict:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    dev = torch.device(f"cuda:{gpu}")
    data = [torch.frombuffer(bytearray(jpegs[i % len(jpegs)]), dtype=torch.uint8) for i in range(batch)]
    decode_jpeg(data, mode=ImageReadMode.RGB, device=dev)  # the decoder is built once per process
    torch.cuda.synchronize(dev)
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def work(k: int) -> None:
        stream = torch.cuda.Stream(dev)
        with torch.cuda.stream(stream):
            while time.perf_counter() < stop:
                decode_jpeg(data, mode=ImageReadMode.RGB, device=dev)
                stream.synchronize()
                counts[k] += batch

    c0, t0 = time.process_time(), time.perf_counter()
    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall, cpu, n = time.perf_counter() - t0, time.process_time() - c0, sum(counts)
    return {"what": "decode", "threads": threads, "batch": batch, "images": n, "img_per_s": round(n / wall),
            "host_cpu_us_per_img": round(cpu / max(n, 1) * 1e6, 1),
            "jpeg_bytes_mean": round(sum(map(len, jpegs)) / len(jpegs))}


_AHEAD = {"decode in launch": "0", "decode one batch ahead": "1", "decode as they come": "eager"}


def engine(items: list, mode: str, batch: int, seconds: float, gpu: int) -> dict:
    from gpufleet import Pool
    from gpufleet.models.zoo.classifier import ImageClassifier

    os.environ["GPUFLEET_DECODE_AHEAD"] = _AHEAD.get(mode, "0")  # read by the classifier's setup
    model = ImageClassifier("resnet50", precision="fp16")
    with Pool(model, str(gpu), max_batch_size=batch, max_wait_ms=2, max_queue=1 << 20) as pool:
        list(pool.map(items * 4))  # warm-up: graphs are captured at setup, the decoder and streams here
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in pool.map(items * 16, max_in_flight=8 * batch):
                n += 1
        wall = time.perf_counter() - t0
        stats = pool.stats()
    return {"what": "engine", "mode": mode, "batch": batch, "images": n, "img_per_s": round(n / wall),
            "avg_batch": stats.get("avg_batch_size")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--skip-engine", action="store_true")
    args = ap.parse_args()
    jpegs = w3_jpegs(8)
    for threads in (1, 2):
        print(json.dumps(decode(jpegs, threads, args.batch, args.seconds, args.gpu)), flush=True)
    if args.skip_engine:
        return
    import torch
    from torchvision.io import decode_jpeg

    for mode in _AHEAD:
        print(json.dumps(engine(jpegs * 16, mode, args.batch, args.seconds, args.gpu)), flush=True)
    images = [decode_jpeg(torch.frombuffer(bytearray(j), dtype=torch.uint8)) for j in jpegs]
    print(json.dumps(engine(images * 16, "decoded uint8 (no decoding)", args.batch, args.seconds, args.gpu)),
          flush=True)


if __name__ == "__main__":
    main()
