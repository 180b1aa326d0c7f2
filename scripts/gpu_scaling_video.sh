#!/usr/bin/env bash
# Issue 10 on a 2-GPU machine, call 2 of 2 (right after scripts/gpu_scaling.sh, while /tmp/site still holds
# its wheels and PyAV): adds PyNvVideoCodec (carry .whlv), runs the GPU-marked tests, then W4 on 1 GPU and
# on 2 GPUs side by side (scripts/gpu_video_scale.py).
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
WHEELS=${WHEELS:-.whlv} source scripts/device_setup.sh
python3 -c "import av, PyNvVideoCodec, uvicorn" || { echo "wheels missing: run scripts/gpu_scaling.sh first"; exit 1; }
echo "== pytest -m gpu"
timeout "${TEST_LIMIT:-200}" python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
echo "== W4"
timeout "${VIDEO_LIMIT:-300}" python3 scripts/gpu_video_scale.py 2>&1 | tee "$OUT/video_scale.log" | grep -E "^\{|W4"
rm -f "$OUT"/*.jsonl "$OUT"/video1080.mp4
