"""ResNet-50 behind NVIDIA Triton (tritonserver 2.51 through PyTriton 0.7.0), doing per request the work
``gpufleet serve resnet50`` does, for benchmarks/triton_run.sh to load both with the same client.

Per request: one 224x224 JPEG as a KServe v2 ``BYTES`` input named ``input``; the answer is the top-1 ``class``
(INT32) and its softmax ``score`` (FP32). Model ``resnet50``: torchvision ResNet-50 with random weights seeded
as gpufleet's ``ImageClassifier`` (``torch.manual_seed(0)``, built on the device), in the dtype gpufleet picks
by default (``--dtype auto``: bf16 on compute capability >= 8, e.g. H100/H200; fp16 on 7.x; fp32 on CPU),
channels_last, TF32 and cudnn.benchmark on as gpufleet sets them. A batch: JPEGs decoded on the GPU in one
call (``torchvision.io.decode_jpeg(list, device="cuda")``), stacked, normalised in one pass
(uint8 -> channels_last -> addcmul into the model's dtype, as gpufleet), forward, softmax, top-1.

``--mode graphs`` (default on CUDA): per model instance, CUDA graphs of normalise + forward + softmax/top-1
captured per batch bucket (1, 2, 4, ..., max batch; a batch runs padded in the smallest bucket that holds it,
as gpufleet's); a capture that fails falls back to eager with a log line. ``--mode eager``: plain eager.
Decoding is never in a graph (as in gpufleet).

Batching: Triton's dynamic batcher, ``max_batch_size`` 64 (gpufleet's default on GPUs), queue delay 2 ms
(``--delay-us``; PyTriton also sets ``preferred_batch_size: [max]``). ``--instances N`` (default 2): N model
instances, which PyTriton runs as N Python threads of this process, each with its own CUDA stream and graphs
over one shared copy of the weights, so one batch can decode while another computes (the GIL is shared; GPU
decodes are serialised by a lock, as one nvJPEG decoder per process serves them).
PyTriton's path: tritonserver (C++, gRPC/HTTP, batcher) -> Python-backend stub process -> shared memory and
ZeroMQ -> this process.

Shape: with ``max_batch_size`` > 0 Triton wants ``[batch, *dims]`` with non-empty dims (checked on tritonserver
2.51: dims ``()`` is refused at load, "must specify 'dims'"; dims ``(1,)`` refuses the shape ``[1]`` gpufleet's
client sent then, "Expected [-1,1], got [1]"), so the input is dims ``(1,)`` and the request's shape ``[1, 1]``,
which ``gpufleet load --payload jpeg224`` sends over gRPC.

Environment (what triton_run.sh sets up): PyTriton 0.7.0 with numpy < 2 (with numpy 2 its Python-backend stub
misreads BYTES inputs and dies); the stub takes its ``sys.path`` from the ``python3`` first on PATH, which PyTriton
makes this interpreter's ``bin/`` (``PYTHONPATH`` does not reach it), so run this from a venv that sees PyTriton,
pyzmq and numpy; libpython3.X.so findable (this script adds sysconfig's LIBDIR and PyTriton's bundled libraries
to ``LD_LIBRARY_PATH`` for the processes it starts). CPU check:
    python3 benchmarks/triton_server.py --device cpu --arch resnet18 --grpc-port 8001 --http-port 8000
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import numpy as np

log = logging.getLogger("triton_server")

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
# One GPU JPEG decode at a time across instances: torchvision keeps one nvJPEG decoder per process, and gpufleet
# decodes from one worker thread per GPU too. The other instance's forward still overlaps a decode.
_DECODE_LOCK = threading.Lock()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=0, help="default: --http-port + 2")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--delay-us", type=int, default=2000, help="dynamic batcher max_queue_delay_microseconds")
    p.add_argument("--instances", type=int, default=2, help="model instances (threads of this process)")
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    p.add_argument("--mode", choices=("graphs", "eager"), default="graphs", help="CUDA graphs per batch bucket "
                   "or eager (CPU: always eager)")
    p.add_argument("--dtype", choices=("auto", "fp16", "bf16", "fp32"), default="auto",
                   help="auto: gpufleet's default (bf16 on cc >= 8, fp16 on 7.x, fp32 on CPU)")
    p.add_argument("--arch", default="resnet50", help="torchvision architecture (resnet18 for quick CPU tests)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--log-verbose", type=int, default=0, help="tritonserver --log-verbose")
    return p.parse_args(argv)


class Instance:
    """One Triton model instance: its own CUDA stream and graphs over the shared module."""

    def __init__(self, idx: int, module: Any, dev: Any, dtype: Any, image_size: int, buckets: tuple[int, ...],
                 graphs: bool) -> None:
        import torch

        self.idx, self.module, self.dev, self.dtype, self.size = idx, module, dev, dtype, image_size
        self.cuda = dev.type == "cuda"
        self.stream = torch.cuda.Stream(dev) if self.cuda else None
        self.scale = (1 / (torch.tensor(_STD, device=dev).view(1, 3, 1, 1) * 255))
        self.shift = -torch.tensor(_MEAN, device=dev).view(1, 3, 1, 1) * 255 * self.scale
        self.buckets = buckets
        self.graphs: dict[int, tuple[Any, Any, Any]] = {}  # bucket -> (graph, static uint8 input, static output)
        self.batches = 0
        self.items = 0
        if graphs and self.cuda:
            try:
                self._capture()
            except Exception as exc:  # eager still serves: say so rather than fail the benchmark
                log.warning("instance %d: CUDA graph capture failed (%r); running eager", idx, exc)
                self.graphs = {}

    def forward(self, x: Any) -> tuple[Any, Any]:
        """uint8 [n, 3, H, W] on the device -> (class int32, score float32), as gpufleet's transform/finalize."""
        import torch

        x = x.contiguous(memory_format=torch.channels_last)
        x = torch.addcmul(self.shift, x, self.scale, out=torch.empty_like(x, dtype=self.dtype))
        y = self.module(x)
        score, cls = y.float().softmax(1).max(1)
        return cls.to(torch.int32), score

    def _capture(self) -> None:
        import torch

        pool = torch.cuda.graph_pool_handle()
        t0 = time.perf_counter()
        with torch.inference_mode(), torch.cuda.device(self.dev):
            for b in sorted(self.buckets, reverse=True):  # the largest first: the smaller reuse its pool memory
                x = torch.zeros((b, 3, self.size, self.size), dtype=torch.uint8, device=self.dev)
                side = torch.cuda.Stream(self.dev)
                side.wait_stream(torch.cuda.current_stream(self.dev))
                with torch.cuda.stream(side):
                    for _ in range(3):
                        self.forward(x)
                torch.cuda.current_stream(self.dev).wait_stream(side)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool):
                    y = self.forward(x)
                self.graphs[b] = (g, x, y)
            torch.cuda.synchronize(self.dev)
        log.info("instance %d: CUDA graphs for buckets %s in %.1f s", self.idx, sorted(self.graphs),
                 time.perf_counter() - t0)

    def decode(self, jpegs: list[bytes]) -> Any:
        """The batch's JPEGs decoded (on the GPU in one call) and stacked: uint8 [n, 3, H, W] on the device."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
        if self.cuda:
            with _DECODE_LOCK:
                imgs = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.dev)
        else:
            imgs = decode_jpeg(data, mode=ImageReadMode.RGB)
        out = []
        for img in imgs:
            if img.shape[-2:] != (self.size, self.size):  # gpufleet resizes too (the benchmark's JPEGs are 224)
                img = torch.nn.functional.interpolate(img[None].float(), size=(self.size, self.size),
                                                      mode="bilinear", antialias=True, align_corners=False)[0]
                img = img.round_().clamp_(0, 255).to(torch.uint8)
            out.append(img)
        return torch.stack(out)

    def run(self, jpegs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        n = len(jpegs)
        self.batches += 1
        self.items += n
        with torch.inference_mode():
            if not self.cuda:
                cls, score = self.forward(self.decode(jpegs))
                return cls.numpy(), score.numpy()
            with torch.cuda.device(self.dev), torch.cuda.stream(self.stream):
                x = self.decode(jpegs)
                b = next((b for b in sorted(self.graphs) if b >= n), None)
                if b is None:
                    cls, score = self.forward(x)
                else:
                    g, sx, (scls, sscore) = self.graphs[b]
                    sx[:n].copy_(x)
                    g.replay()
                    cls, score = scls[:n], sscore[:n]
                return cls.cpu().numpy(), score.cpu().numpy()  # waits for this stream only


def build(args: argparse.Namespace) -> tuple[list[Instance], str]:
    import torch
    import torchvision

    dev = torch.device("cuda", 0) if args.device == "cuda" else torch.device(args.device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        major = torch.cuda.get_device_capability(dev)[0]
        auto = "bf16" if major >= 8 else "fp16" if major >= 7 else "fp32"
        dtype_name = args.dtype if args.dtype != "auto" else auto
        if major >= 8:  # gpufleet turns TF32 on for these architectures
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    else:
        dtype_name = args.dtype if args.dtype != "auto" else "fp32"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    torch.manual_seed(0)  # as gpufleet's ImageClassifier.load: random weights, built on the device
    if dev.type == "cuda":
        with torch.device(dev):
            module = torchvision.models.get_model(args.arch, weights=None)
    else:
        module = torchvision.models.get_model(args.arch, weights=None)
    module = module.eval().to(dev)
    if dtype != torch.float32:
        module = module.to(dtype)
    module = module.to(memory_format=torch.channels_last)
    top = args.max_batch_size
    buckets = tuple(sorted({b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= top} | {top}))
    graphs = args.mode == "graphs" and dev.type == "cuda"
    instances = [Instance(i, module, dev, dtype, args.image_size, buckets, graphs) for i in range(args.instances)]
    if dev.type == "cuda":  # warm every bucket (eager: cudnn.benchmark picks its algorithms now, not under load)
        with torch.inference_mode():
            for inst in instances:
                if not inst.graphs:
                    for b in buckets:
                        inst.forward(torch.zeros((b, 3, args.image_size, args.image_size), dtype=torch.uint8,
                                                 device=dev))
        torch.cuda.synchronize(dev)
    mode = "graphs" if any(i.graphs for i in instances) else "eager"
    return instances, f"{args.arch} {dtype_name} channels_last {mode} on {dev}"


def library_path() -> None:
    """Make tritonserver's bundled libraries and libpython findable by the processes PyTriton starts.

    Installed with ``pip --target`` (not a site-packages directory) PyTriton takes itself for an editable install
    and points tritonserver at ``pytriton/tritonserver/external_libs`` instead of ``nvidia_pytriton.libs``; its
    Python-backend stub links ``libpython3.X.so``. The bundled libraries carry hashed names (auditwheel), so they
    clash with nothing."""
    import pathlib
    import sysconfig

    import pytriton

    dirs = [str(pathlib.Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"),
            str(sysconfig.get_config_var("LIBDIR") or "")]
    have = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    os.environ["LD_LIBRARY_PATH"] = ":".join([d for d in dirs if d and os.path.isdir(d) and d not in have] + have)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    library_path()
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    t0 = time.perf_counter()
    instances, what = build(args)
    log.info("model ready in %.1f s: %s, %d instance(s), max batch %d, delay %d us", time.perf_counter() - t0,
             what, len(instances), args.max_batch_size, args.delay_us)
    seen = threading.Event()

    def infer_fn(inst: Instance) -> Any:
        @batch
        def infer(input: np.ndarray) -> dict[str, np.ndarray]:  # noqa: A002 (the KServe input's name)
            if not seen.is_set():
                seen.set()
                log.info("first batch: input %s %s", input.shape, input.dtype)
            cls, score = inst.run([bytes(v) for v in input.reshape(-1)])
            return {"class": cls.reshape(-1, 1), "score": score.reshape(-1, 1)}

        return infer

    config = TritonConfig(grpc_port=args.grpc_port, http_port=args.http_port,
                          metrics_port=args.metrics_port or args.http_port + 2, log_verbose=args.log_verbose,
                          exit_timeout_secs=5)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="resnet50",
            infer_func=[infer_fn(inst) for inst in instances],
            inputs=[Tensor(name="input", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="class", dtype=np.int32, shape=(1,)),
                     Tensor(name="score", dtype=np.float32, shape=(1,))],
            config=ModelConfig(max_batch_size=args.max_batch_size,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=args.delay_us)),
            strict=False,
        )

        def on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt  # serve() stops Triton on it, as on SIGINT

        signal.signal(signal.SIGTERM, on_term)
        log.info("serving resnet50: gRPC %d, HTTP %d", args.grpc_port, args.http_port)
        try:
            triton.serve()
        finally:
            per = ", ".join(f"{i.items}/{i.batches}" for i in instances)
            log.info("items/batches per instance: %s; avg batch %.1f", per,
                     sum(i.items for i in instances) / max(1, sum(i.batches for i in instances)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
