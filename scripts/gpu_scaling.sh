#!/usr/bin/env bash
# Superseded by scripts/gpu_all.sh (one call for everything). Kept as run on 2026-11-23 on a 2-GPU machine:
# placement proof, W2 and W3 on 1 GPU and on 2 GPUs side by side, and the balancers on unequal GPUs.
# Carry .whl (server wheels). Everything lands in $OUT/all.tgz.
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
source scripts/device_setup.sh
B="python3 -m gpufleet bench --model resnet50 --precision fp16 --cuda-graphs --seconds ${SECS:-3} --scale --json"
{ nvidia-smi; nvidia-smi topo -m; python3 -m gpufleet gpus; } > "$OUT/machine.txt" 2>&1
grep -E "H200|H100|GPU[0-9]|cuda:" "$OUT/machine.txt" | head -8
echo "== placement"
timeout 120 python3 - > "$OUT/placement.txt" 2>&1 <<'PY'
import json, logging
import torch
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
from gpufleet import Pool
from gpufleet.bench import ImageClassifier
from gpufleet.devices.monitor import Monitor
if __name__ == "__main__":
    for backend in ("thread", "process"):
        with Pool(ImageClassifier("resnet50", precision="fp16"), "0,1", backend=backend, max_batch_size=64) as pool:
            x = torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8)
            mon = Monitor(pool.devices, period_s=0.2).start()
            list(pool.map([x] * 20000))
            mon.stop()
            st = pool.stats()
            print(backend, json.dumps([{k: w.get(k) for k in ("device", "weights_on", "context_on", "pid", "total_requests")}
                                       for w in st["per_worker_stats"]]))
            hist = mon.history()
            for i, d in enumerate(pool.devices):
                rows = [h[i] for h in hist]
                print(backend, "NVML during load", d.label, d.uuid, "max util %", max((r.get("util_gpu") or 0) for r in rows),
                      "memory used GB", max((r.get("memory_used_gb") or 0) for r in rows), "processes", rows[-1].get("processes"))
PY
tail -8 "$OUT/placement.txt"
echo "== W2 thread"
timeout 280 $B --batch-sizes 8,64,256 > "$OUT/w2_scale_thread.json" 2> "$OUT/w2_scale_thread.err"
echo "== W2 process"
timeout 150 $B --batch-sizes 64 --backend process --no-raw > "$OUT/w2_scale_process.json" 2> "$OUT/w2_scale_process.err"
python3 - "$OUT" <<'PY'
import json, os, sys
from gpufleet.bench import print_report
for name in ("w2_scale_thread", "w2_scale_process"):
    try:
        print_report(json.load(open(os.path.join(sys.argv[1], name + ".json"))))
    except Exception as e:
        print(name, "FAILED", e, open(os.path.join(sys.argv[1], name + ".err")).read()[-1500:])
PY
echo "== balancers (GPU 1 shared with a background matmul load)"
timeout 170 python3 scripts/gpu_balancers.py "${BAL_SECS:-6}" 256 2>&1 | tee "$OUT/balancers.jsonl" | grep "^{"
echo "== W3 1 GPU vs 2 GPUs"
CONFIGS="${W3_CONFIGS:-g1hw8 g2hw8}" LOADP=8 SKIP_P1=1 DUR=${DUR:-10} WARM=2 timeout 240 bash scripts/gpu_w3.sh 2>&1 \
  | grep -v "^\s*$" | tee "$OUT/w3_scale.txt" | grep -E "^(==|W3|W5|stages|per device|NVML|server exit)|python3|gpufleet"
tar czf /tmp/all.tgz -C "$OUT" . && mv /tmp/all.tgz "$OUT/all.tgz"
find "$OUT" -type f ! -name all.tgz ! -name w3_scale.txt ! -name balancers.jsonl ! -name placement.txt -delete
