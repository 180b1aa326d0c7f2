#!/usr/bin/env bash
# W1 raw vs W2 pool on one GPU (BENCH.md): eager pool, pool with CUDA graphs, GIL switch interval variants.
source scripts/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
B="python3 -m gpufleet bench --model resnet50 --precision fp16 --seconds ${SECS:-3}"
$B --batch-sizes 1,8,32,64,128,256 --json > "$OUT/w2_eager.json"
$B --batch-sizes 1,8,32,64,128,256 --cuda-graphs --json > "$OUT/w2_graphs.json"
$B --batch-sizes 8,64 --cuda-graphs --switch-interval-ms 0.5 --no-raw --json > "$OUT/w2_graphs_si.json"
$B --batch-sizes 8,64 --switch-interval-ms 0.5 --no-raw --json > "$OUT/w2_eager_si.json"
python3 - "$OUT" <<'PY'
import json, sys, os
from gpufleet.bench import print_report
for name in ("w2_eager", "w2_graphs", "w2_graphs_si", "w2_eager_si"):
    p = os.path.join(sys.argv[1], name + ".json")
    try:
        r = json.load(open(p))
    except Exception as e:
        print(name, "FAILED", e); continue
    print("==", name); print_report(r)
    for row in r["rows"]:
        print("  bs", row["batch_size"], "stages p50 ms", row["pool"]["stages"])
PY
