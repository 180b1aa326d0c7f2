#!/usr/bin/env bash
# Engine evidence on a GPU machine: gpus, GPU tests, W1 raw vs W2 pool (BENCH.md), demo. Logs to $OUT.
source scripts/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__, torch.cuda.get_device_name(0))' | tee "$OUT/versions.txt"
python3 -m gpufleet gpus | tee "$OUT/gpus.txt"
python3 -m gpufleet gpus --json > "$OUT/gpus.json"
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
timeout 300 python3 -m gpufleet bench --model resnet50 --batch-sizes ${BS:-1,8,32,64,128,256} --seconds ${SECS:-4} --json > "$OUT/bench_w1_w2.json"
python3 - "$OUT/bench_w1_w2.json" <<'PY'
import json, sys
from gpufleet.bench import print_report
r = json.load(open(sys.argv[1])); print_report(r)
for row in r["rows"]:
    print(row["batch_size"], "pool stages p50 ms:", row["pool"]["stages"])
PY
timeout 200 python3 -m gpufleet demo --out /tmp/demo --json > "$OUT/demo.json"; tail -c 1500 "$OUT/demo.json"
