"""What each GPU JPEG decoder costs the host: W3's JPEGs (224x224) decoded in batches on the GPU by torchvision's
``decode_jpeg`` (nvJPEG's default backend, Huffman decoding on the CPU) and, when ``nvidia-nvimgcodec-cu13`` is
importable, by nvImageCodec: its CUDA decoder (``HYBRID_CPU_GPU``; Huffman decoding on its own CPU threads, or on
the GPU with ``hybrid_huffman_threshold=0``, or on one CPU thread) and the hardware decoder (``HW_GPU_ONLY``; a
``GPU_ONLY`` decoder cannot be created for JPEGs in nvImageCodec 0.9: "Code: 7"), each alone and beside
ResNet-50 fp16 (batch 64, CUDA graph) kept busy on another stream, then in the serving loop (decode batch N+1,
stack, replay, wait for batch N). One JSON line each: per-batch wall and host CPU time (p50, ms), images/s, CPU
µs per image (the calling thread's and the whole process's).

    python3 benchmarks/jpeg_decoders.py [--seconds 2] [--batch 64]

On one H100 (2026-12-07, CUDA_DEVICE_MAX_CONNECTIONS=32), a batch of 64 alone: torchvision 3.25 ms, 51 µs of CPU
per image (19,614 img/s); nvImageCodec's CUDA decoder 4.13 ms, 34 µs on the calling thread but 433 µs per image
for the process (its own CPU threads), with Huffman decoding on the GPU (``hybrid_huffman_threshold=0``)
14.5 ms, with one CPU thread 19.2 ms; the hardware decoder 4.26 ms, 66 µs (81 µs for the process). In the
serving loop: 12,864 img/s with torchvision, 12,800 / 4,448 / 3,296 / 12,032 with those, 13,216 without
decoding. So torchvision stays the engine's decoder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from decode_overlap import Busy, graph_model, p50_ms, probe_args, serving_loop, timed_cpu, w3_jpegs


def report(wall: list[float], cpu: list[float], process_cpu: float, batch: int) -> dict:
    n = batch * len(wall)
    return {"ms_p50": p50_ms(wall), "thread_cpu_ms_p50": p50_ms(cpu), "img_per_s": round(n / sum(wall)),
            "thread_cpu_us_per_img": round(1e6 * sum(cpu) / n, 1),
            "process_cpu_us_per_img": round(1e6 * process_cpu / n, 1)}


def main() -> None:
    args = probe_args(__doc__)
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    dev = torch.device(f"cuda:{args.gpu}")
    data = w3_jpegs(args.batch)
    tensors = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in data]
    graph, x, _ = graph_model(dev, 64)
    side = torch.cuda.Stream(dev)
    decoders: dict[str, Callable[[int], list]] = {}

    def tv(k: int) -> list:
        with torch.cuda.stream(side):
            return list(decode_jpeg(tensors[:k], mode=ImageReadMode.RGB, device=dev))

    decoders["torchvision"] = tv
    try:
        from nvidia import nvimgcodec
    except ImportError as exc:
        print(json.dumps({"decoder": "nvimgcodec", "error": f"not importable: {exc}"}), flush=True)
    else:
        gpu_huffman = "nvjpeg_cuda_decoder:hybrid_huffman_threshold=0"
        for kind, options, threads in (("HYBRID_CPU_GPU", "", 0), ("HYBRID_CPU_GPU", gpu_huffman, 0),
                                       ("HYBRID_CPU_GPU", "", 1), ("HW_GPU_ONLY", "", 0)):
            label = f"nvimgcodec {kind} {options} cpu_threads={threads or 'default'}"
            try:
                dec = nvimgcodec.Decoder(device_id=args.gpu, options=options, max_num_cpu_threads=threads,
                                         backends=[nvimgcodec.Backend(getattr(nvimgcodec.BackendKind, kind))])
                dec.decode(data[:2], cuda_stream=side.cuda_stream)
            except Exception as exc:  # noqa: BLE001
                print(json.dumps({"decoder": label, "error": repr(exc)}), flush=True)
                continue

            def nv(k: int, dec=dec) -> list:  # noqa: ANN001
                imgs = dec.decode(data[:k], cuda_stream=side.cuda_stream)
                return [torch.as_tensor(i, device=dev).permute(2, 0, 1) for i in imgs]

            decoders[label] = nv
    for name, fn in decoders.items():
        first = fn(args.batch)
        out: dict = {"decoder": name, "batch": args.batch, "shape": list(first[0].shape)}

        def call(fn=fn) -> None:  # noqa: ANN001
            fn(args.batch)
            side.synchronize()

        try:
            out["alone"] = report(*timed_cpu(call, args.seconds), args.batch)
            with Busy(graph.replay, dev, 64) as busy:
                n0, t0 = busy.n, time.perf_counter()
                out["beside_graph"] = report(*timed_cpu(call, args.seconds), args.batch)
                out["beside_graph"]["model_img_per_s"] = round((busy.n - n0) / (time.perf_counter() - t0))
            out["serving_loop"] = serving_loop(name, lambda compute, k, fn=fn: fn(k), graph.replay, x, dev,
                                               args.seconds, "side", side)
        except Exception as exc:  # noqa: BLE001
            out["error"] = repr(exc)
        print(json.dumps(out), flush=True)
    blank = [torch.zeros((3, 224, 224), dtype=torch.uint8, device=dev)] * args.batch
    print(json.dumps(serving_loop("no decode", lambda compute, k: blank[:k], graph.replay, x, dev, args.seconds,
                                  "compute")), flush=True)


if __name__ == "__main__":
    main()
