#!/usr/bin/env bash
# BENCH.md W4 `video1080` on one GPU. Logs and JSON go to $OUT (default out/gpu_video).
#   1. a 1080p30 H.264 file of 600 frames (PyAV/libx264, keyframe every 30 frames so it splits)
#   2. decode-only fps: NVDEC with 1 decoder and with 2/4/8 in parallel (segments), PyAV CPU (threads AUTO)
#   3. pipeline fps decode+infer: ResNet-18 at 224 (GPU resize, CUDA graphs) with nvdec and cpu decoders,
#      and textdet; CPU cores used and per-stage times for each
#   4. a PNG of one annotated textdet frame: $OUT/annotated_frame.png
# Usage: OUT=/path bash scripts/gpu_video.sh   (PYTHON=... picks the interpreter; FRAMES=60 SIZE=320x180 smoke)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_video}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

"$PY" - "$OUT" <<'EOF' 2>&1 | tee "$OUT/gpu_video.log"
import json, os, sys, threading, time, traceback
from pathlib import Path

import av, numpy as np, torch

from gpufleet import synth, video
from gpufleet.video.segments import split
from gpufleet.video.sources import CpuSource, NvdecSource, nvdec_available, probe

out = Path(sys.argv[1])
N = int(os.environ.get("FRAMES", "600"))  # FRAMES / SIZE only shrink it for a smoke run on a CPU machine
W, H = (int(v) for v in os.environ.get("SIZE", "1920x1080").split("x"))
report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__, "av": av.__version__,
          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "cpu_count": os.cpu_count(),
          "nvdec": nvdec_available() or "ok"}
try:
    import PyNvVideoCodec as nvc
    report["pynvvideocodec"] = getattr(nvc, "__version__", "?")
except Exception as exc:  # noqa: BLE001
    report["pynvvideocodec"] = f"unavailable: {exc}"


def save():
    (out / "gpu_video.json").write_text(json.dumps(report, indent=2, default=str))


def step(name, fn):
    print(f"== {name}", flush=True)
    try:
        report[name] = fn()
        print(json.dumps(report[name], default=str)[:1500], flush=True)
    except Exception as exc:  # noqa: BLE001 - keep going, record the failure
        traceback.print_exc()
        report[name] = {"error": f"{type(exc).__name__}: {exc}"}
    save()


src = out / "video1080.mp4"


def make():
    t0 = time.perf_counter()
    with av.open(str(src), "w") as c:
        s = c.add_stream("libx264", rate=30, options={"g": "30", "keyint_min": "30", "preset": "veryfast"})
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for f, _ in synth.moving_text_frames(N, size=(W, H), n_lines=4, seed=1):
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    info = probe(str(src))
    return {"path": str(src), "frames": info.frames, "keyframes": len(info.keyframes), "codec": info.codec,
            "size_mb": round(src.stat().st_size / 1e6, 2), "seconds": round(time.perf_counter() - t0, 1)}


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    w0, c0 = time.perf_counter(), time.process_time()
    n = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    w, c = time.perf_counter() - w0, time.process_time() - c0
    return {"frames": n, "seconds": round(w, 3), "fps": round(n / w, 1), "cpu_cores_used": round(c / w, 2)}


def decode_parallel(make_source, k):
    info = probe(str(src))
    segs = split(info, k)
    counts = [0] * len(segs)

    def work(i, seg):
        for chunk in make_source(info, seg):
            counts[i] += len(chunk)

    def go():
        ts = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(segs)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return sum(counts)

    r = timed(go)
    r["decoders"] = len(segs)
    return r


def decode_only():
    res = {}
    decode_parallel(lambda i, s: CpuSource(i, s.start, s.stop, chunk=32), 1)  # warm-up: file cache, libraries
    if nvdec_available() is None:
        def raw():  # PyNvVideoCodec alone, no copies: the NVDEC ceiling for one decoder
            dec = nvc.SimpleDecoder(str(src), gpu_id=0, use_device_memory=True,
                                    output_color_type=nvc.OutputColorType.RGBP)
            n = 0
            while True:
                got = dec.get_batch_frames(32)
                if not got:
                    return n
                n += len(got)
        res["nvdec_raw_1"] = timed(raw)
        for k in (1, 2, 4, 8):
            res[f"nvdec_{k}"] = decode_parallel(lambda i, s: NvdecSource(i, s.start, s.stop, gpu_id=0, chunk=32), k)
    for k in (1, 4):
        res[f"pyav_{k}"] = decode_parallel(lambda i, s: CpuSource(i, s.start, s.stop, chunk=32), k)
    return res


def classifier(decoder, segments, batch, inputs=1):
    from gpufleet.bench import ImageClassifier

    buckets = tuple(b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= batch)
    model = ImageClassifier("resnet18", cuda_graphs=True, example_shape=(3, 224, 224), example_dtype=torch.uint8,
                            batch_buckets=buckets, warmup_batch_sizes=buckets)
    s = video.run([str(src)] * inputs, model, decoder=decoder, batch_size=batch, max_batch_size=batch,
                  segments=segments, queue_size=4 * batch, jsonl=str(out / f"resnet18_{decoder}.jsonl"),
                  progress=False, max_wait_ms=2)
    return {k: s[k] for k in ("frames", "fps", "elapsed_s", "cpu_cores_used", "avg_batch_size", "decoders",
                              "stages_ms_per_frame", "exit_code")} | {"segments": segments, "batch": batch,
                                                                        "inputs": inputs}


def textdet(annotate):
    kw = {"out": str(out / "annotated.mp4"), "every_nth": 5} if annotate else {}
    s = video.run(str(src), "textdet", batch_size=16, max_batch_size=16, queue_size=64,
                  jsonl=str(out / f"textdet{'_annotated' if annotate else ''}.jsonl"), progress=False, **kw)
    truth = [b for _, b in synth.moving_text_frames(N, size=(W, H), n_lines=4, seed=1)]
    recs = [json.loads(x) for x in open(out / f"textdet{'_annotated' if annotate else ''}.jsonl")]
    recall = sum(synth.box_recall([r["box"] for r in rec["results"] or []], truth[rec["frame"]]) for rec in recs)
    return {k: s[k] for k in ("frames", "fps", "elapsed_s", "cpu_cores_used", "avg_batch_size", "decoders",
                              "encoders", "stages_ms_per_frame", "exit_code", "inputs")} | {
        "recall": round(recall / max(1, len(recs)), 4)}


def screenshot():
    from PIL import Image

    with av.open(str(out / "annotated.mp4")) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == 10:
                Image.fromarray(f.to_ndarray(format="rgb24")).save(out / "annotated_frame.png")
                return {"png": str(out / "annotated_frame.png"), "frame_index_in_output": i}
    return {"error": "annotated.mp4 has fewer than 11 frames"}


step("file", make)
step("decode_only", decode_only)
gpu = torch.cuda.is_available()
for dec in (("nvdec", "cpu") if gpu else ("cpu",)):
    for seg, batch in ((4, 64), (8, 128)) if dec == "nvdec" else ((4, 64),):
        step(f"resnet18_{dec}_seg{seg}_b{batch}", lambda: classifier(dec, seg, batch))
if gpu:
    step("resnet18_nvdec_4inputs", lambda: classifier("nvdec", 0, 128, inputs=4))
step("textdet", lambda: textdet(False))
step("textdet_annotated", lambda: textdet(True))
step("screenshot", screenshot)
print(json.dumps(report, indent=2, default=str))
EOF
echo "wrote $OUT/gpu_video.json, $OUT/gpu_video.log, $OUT/annotated_frame.png"
