"""KServe v2 over gRPC beside HTTP against one running ``gpufleet serve --grpc-port``: the same JPEG requests
(one 224x224 JPEG per request as a BYTES [1] tensor; and raw ``/predict`` for reference), closed loop, req/s,
p50, p99 and errors per protocol and concurrency, JSON on stdout.

    python benchmarks/grpc_vs_http.py --http 127.0.0.1:8000 --grpc 127.0.0.1:8001 --model resnet50 \
        --concurrency 8,256 --processes 12 --duration 8 --warmup 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import struct
import time
from typing import Any


def _jpegs() -> list[bytes]:
    from gpufleet.tools.load import _jpeg  # the load generator's JPEGs (--payload jpeg224)

    return [_jpeg((0, 90, 180, 270)[i % 4], seed=i) for i in range(8)]


def _infer_body(jpeg: bytes) -> tuple[bytes, int]:
    head = json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1],
                                   "parameters": {"binary_data_size": len(jpeg) + 4}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + struct.pack("<I", len(jpeg)) + jpeg, len(head)


async def _loop(proto: str, args: argparse.Namespace, conc: int, jpegs: list[bytes]) -> dict[str, Any]:
    lat: list[float] = []
    errors: dict[str, int] = {}
    t_start = time.monotonic() + args.warmup
    t_end = t_start + args.duration
    if proto == "grpc":
        import grpc

        from gpufleet.protos import pb

        reqs = []
        for j in jpegs:
            r = pb.ModelInferRequest(model_name=args.model)
            r.inputs.add(name="input", datatype="BYTES", shape=[1])
            r.raw_input_contents.append(struct.pack("<I", len(j)) + j)
            reqs.append(r)
        channels = [grpc.aio.insecure_channel(args.grpc) for _ in range(max(1, min(conc, args.channels)))]
        calls = [ch.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                request_serializer=pb.ModelInferRequest.SerializeToString,
                                response_deserializer=pb.ModelInferResponse.FromString) for ch in channels]

        async def one(i: int, n: int) -> str | None:
            try:
                await calls[i % len(calls)](reqs[n % len(reqs)], timeout=30)
                return None
            except grpc.aio.AioRpcError as exc:
                return exc.code().name
    else:
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc))
        if proto == "kserve-http":
            url = f"http://{args.http}/v2/models/{args.model}/infer"
            bodies = [_infer_body(j) for j in jpegs]
            posts = [(b, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(h)})
                     for b, h in bodies]
        else:
            url = f"http://{args.http}/predict"
            posts = [(j, {"Content-Type": "image/jpeg"}) for j in jpegs]

        async def one(i: int, n: int) -> str | None:
            body, headers = posts[n % len(posts)]
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                return None if r.status == 200 else str(r.status)

    async def worker(i: int) -> None:
        n = i
        while (now := time.monotonic()) < t_end:
            err = await one(i, n)
            n += 1
            done = time.monotonic()
            if now >= t_start:
                if err is None:
                    lat.append(done - now)
                else:
                    errors[err] = errors.get(err, 0) + 1

    await asyncio.gather(*(worker(i) for i in range(conc)))
    if proto == "grpc":
        for ch in channels:
            await ch.close()
    else:
        await session.close()
    return {"lat": lat, "errors": errors}


def _proc(a: tuple) -> dict[str, Any]:
    proto, args, conc = a
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_loop(proto, args, conc, _jpegs()))


def run(proto: str, args: argparse.Namespace, conc: int) -> dict[str, Any]:
    procs = 1 if conc <= 16 else args.processes
    shares = [conc // procs + (1 if i < conc % procs else 0) for i in range(procs)]
    with multiprocessing.get_context("spawn").Pool(procs) as p:
        parts = p.map(_proc, [(proto, args, s) for s in shares if s])
    lat = sorted(x for part in parts for x in part["lat"])
    errors: dict[str, int] = {}
    for part in parts:
        for k, v in part["errors"].items():
            errors[k] = errors.get(k, 0) + v

    def q(f: float) -> float:
        return round(lat[min(len(lat) - 1, int(f * len(lat)))] * 1e3, 2) if lat else float("nan")

    return {"protocol": proto, "concurrency": conc, "requests": len(lat), "req_s": round(len(lat) / args.duration, 1),
            "p50_ms": q(0.5), "p99_ms": q(0.99), "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--http", default="127.0.0.1:8000")
    ap.add_argument("--grpc", default="127.0.0.1:8001")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--concurrency", default="8,256")
    ap.add_argument("--protocols", default="predict,kserve-http,grpc")
    ap.add_argument("--processes", type=int, default=12)
    ap.add_argument("--channels", type=int, default=8, help="gRPC channels (connections) per client process")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    args = ap.parse_args()
    for conc in (int(c) for c in args.concurrency.split(",")):
        for proto in args.protocols.split(","):
            print(json.dumps(run(proto, args, conc)), flush=True)


if __name__ == "__main__":
    main()
