#!/usr/bin/env bash
# On the GPU machine: gpufleet serve resnet50 --grpc-port, then benchmarks/grpc_vs_http.py at c=8 and c=256,
# for 1 and for N HTTP front ends (CONFIGS). Wheels the machine lacks come from .whl/ (carry it).
#   run(command="bash benchmarks/grpc_run.sh", carry=[".whl"], timeout_s=600)
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
ls .whl/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>&1 | tail -2  # uvicorn, starlette, msgspec, httptools, orjson (benchmarks/fetch_wheels.sh); the H200 image has grpcio
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/grpc_bench.txt"; nproc >> "$OUT/grpc_bench.txt"
for cfg in ${CONFIGS:-1 4}; do
  python3 -m gpufleet serve resnet50 --port 8000 --grpc-port 8001 --http-workers "$cfg" --log-level warning \
    > "$OUT/serve_w$cfg.log" 2>&1 &
  spid=$!
  for _ in $(seq 1 240); do curl -sf localhost:8000/v2/health/ready >/dev/null && break; sleep 0.5; done
  echo "== --http-workers $cfg" >> "$OUT/grpc_bench.txt"
  timeout 400 python3 benchmarks/grpc_vs_http.py --model resnet50 --concurrency 8,256 --processes "${LOADP:-12}" \
    --duration "${DUR:-8}" --warmup "${WARM:-2}" >> "$OUT/grpc_bench.txt" 2>> "$OUT/grpc_bench.err"
  curl -s localhost:8000/stats | python3 -c "import json,sys; s=json.load(sys.stdin); print('avg_batch_size', s.get('avg_batch_size'))" >> "$OUT/grpc_bench.txt"
  kill -TERM $spid; wait $spid; echo "exit $?" >> "$OUT/grpc_bench.txt"
done
cat "$OUT/grpc_bench.txt"; tail -5 "$OUT/grpc_bench.err"
