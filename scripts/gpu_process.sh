#!/usr/bin/env bash
# Issue 5 evidence on ONE GPU (prepared, run by the lead): W2 (uint8 CHW items through Pool.map) for
# ResNet-18 @ batch 8 and ResNet-50 @ batch 64, backend thread vs process, 1/2/4/8 workers per GPU, without
# then kill -9 of a worker under load with zero lost items; then the matrix again with an MPS daemon started here.
# Output: $OUT/process_tests.txt, $OUT/w2_process_{nomps,mps}.jsonl, $OUT/kill9.json, $OUT/summary.txt.
source scripts/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SECS=${SECS:-4}
export GPUFLEET_W2_SECS=$SECS

if [ -z "${SKIP_TESTS:-}" ]; then
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests/engine/test_process_wire.py \
    tests/engine/test_process_pool.py tests/e2e/test_process_crash.py tests/devices/test_mps.py 2>&1 \
    | tail -5 | tee "$OUT/process_tests.txt"
fi

cat > /tmp/w2_one.py <<'PY'
"""One W2 configuration in a fresh interpreter: prints one JSON line."""
import itertools, json, os, sys, time
import torch
from gpufleet import Pool
from gpufleet.bench import ImageClassifier


def main():
    model, bs, backend, wpd, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    secs = float(os.environ.get("GPUFLEET_W2_SECS", "4"))
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8, generator=g) for _ in range(256)]
    clf = ImageClassifier(model, precision="auto", batch_buckets=(bs,), example_shape=(3, 224, 224),
                          example_dtype=torch.uint8, warmup_batch_sizes=(bs,))
    row = {"tag": tag, "model": model, "batch": bs, "backend": backend, "workers_per_gpu": wpd}
    try:
        t0 = time.perf_counter()
        with Pool(clf, "0", backend=backend, workers_per_device=wpd, max_batch_size=bs, max_wait_ms=2.0,
                  max_queue=1_000_000) as pool:
            row["startup_s"] = round(time.perf_counter() - t0, 2)
            ref = list(pool.map(images[:64]))
            for _ in pool.map(itertools.islice(itertools.cycle(images), bs * 8 * wpd)):
                pass
            t0 = time.perf_counter()
            n = bs * 8 * wpd
            for _ in pool.map(itertools.islice(itertools.cycle(images), n)):
                pass
            rate = n / (time.perf_counter() - t0)
            n = max(bs * 20, int(rate * secs))
            before = pool.stats()
            t0 = time.perf_counter()
            done = sum(1 for _ in pool.map(itertools.islice(itertools.cycle(images), n)))
            elapsed = time.perf_counter() - t0
            st = pool.stats()
            again = list(pool.map(images[:64]))
        batches = st["total_batches"] - before["total_batches"]
        row.update(items_s=round(done / elapsed, 1), p50_ms=round(st["stages"]["e2e"]["p50_ms"], 3),
                   p99_ms=round(st["stages"]["e2e"]["p99_ms"], 3), avg_batch=round(done / max(1, batches), 2),
                   stages_p50_ms={k: round(v["p50_ms"], 3) for k, v in st["stages"].items()},
                   mps=st.get("mps"), errors=st["errors"],
                   stable=sum(repr(a) == repr(b) for a, b in zip(ref, again)) / len(ref))
    except Exception as exc:  # record and go on with the matrix
        row["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(row), flush=True)


if __name__ == "__main__":  # backend='process' spawns workers that re-import this file
    main()
PY

# MATRIX: "model batch backend workers ..." entries separated by ';' (default: the full matrix)
FULL="resnet18 8 thread 1 2 4 8;resnet18 8 process 1 2 4 8;resnet50 64 thread 1 2 4 8;resnet50 64 process 1 2 4 8"
matrix() {  # $1 = tag (nomps|mps), $2 = matrix
  local tag=$1
  IFS=';' read -ra rows <<< "$2"
  for row in "${rows[@]}"; do
    set -- $row
    local model=$1 bs=$2 backend=$3; shift 3
    for w in "$@"; do
      timeout 300 python3 /tmp/w2_one.py "$model" "$bs" "$backend" "$w" "$tag" 2>>"$OUT/w2_$tag.log" \
        | tee -a "$OUT/w2_process_$tag.jsonl"
    done
  done
}

: > "$OUT/w2_process_nomps.jsonl"; : > "$OUT/w2_process_mps.jsonl"
echo "== without MPS (daemon running already: $(python3 -c 'from gpufleet.devices import mps_running; print(mps_running())'))"
matrix nomps "${MATRIX:-$FULL}"
echo "== kill -9 under load"
cat > /tmp/kill9.py <<'PY'
"""Stream items through 2 process workers on GPU 0, SIGKILL one mid-stream; every item must get the same
answer as a reference run (zero lost, zero wrong). A file, not stdin: spawned workers re-import __main__."""
import json, os, signal, sys, threading, time
import torch
from gpufleet import Pool
from gpufleet.bench import ImageClassifier


def main() -> None:
  g = torch.Generator().manual_seed(0)
  images = [torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8, generator=g) for _ in range(64)]
  # fp32: two processes may pick different cuDNN kernels; in bf16 that moves scores by a few per cent (seen:
  # 0.1826 vs 0.1779, same class), which would hide a real mix-up. TF32 still moves them ~0.1%.
  clf = ImageClassifier("resnet18", precision="fp32", batch_buckets=(8,), example_shape=(3, 224, 224),
                        example_dtype=torch.uint8, warmup_batch_sizes=(8,))
  report = {"max_score_rel_diff": 0.0}
  with Pool(clf, "0", backend="process", workers_per_device=2, max_batch_size=8, max_wait_ms=2.0,
            max_retries=3, restart_backoff_s=0.2) as pool:
      ref = list(pool.map(images))
      futures, stop = [], threading.Event()

      def produce():
          i = 0
          while not stop.is_set():
              futures.append((i, pool.submit(images[i % 64])))
              i += 1
              if i % 64 == 0:
                  time.sleep(0.002)
              while pool.outstanding > 2000:
                  time.sleep(0.001)

      th = threading.Thread(target=produce)
      th.start()
      time.sleep(3)
      victim = pool.workers[0]
      old = victim.pid
      t_kill = time.monotonic()
      os.kill(old, signal.SIGKILL)
      while victim.healthy:
          time.sleep(0.001)
      report["detected_s"] = round(time.monotonic() - t_kill, 3)
      while not (victim.healthy and victim.pid != old):
          time.sleep(0.01)
      report["back_s"] = round(time.monotonic() - t_kill, 3)
      time.sleep(3)
      stop.set()
      th.join()
      lost = wrong = 0
      for i, f in futures:
          try:
              r, want = f.result(timeout=120), ref[i % 64]
              rel = abs(r["score"] - want["score"]) / max(1e-9, want["score"])
              report["max_score_rel_diff"] = max(report["max_score_rel_diff"], rel)
              if r["class"] != want["class"] or rel > 1e-2:  # another item's answer, not float noise
                  wrong += 1
                  report.setdefault("first_wrong", [i, r, want])
          except Exception as exc:
              lost += 1
              report.setdefault("first_error", f"{type(exc).__name__}: {exc}")
      st = pool.stats()
      report.update(items=len(futures), lost=lost, wrong=wrong, restarts=st["restarts"],
                    health=pool.health()["backends"], per_worker=[(w["worker"], w["total_requests"])
                                                                  for w in st["per_worker_stats"]])
  json.dump(report, open(os.path.join(sys.argv[1], "kill9.json"), "w"), indent=2)
  print(json.dumps({k: v for k, v in report.items() if k != "health"}))


if __name__ == "__main__":
  main()
PY
timeout 150 python3 /tmp/kill9.py "$OUT" 2>"$OUT/kill9.log"

if [ -n "${NO_MPS:-}" ]; then
  echo "MPS runs skipped (NO_MPS set)"
elif command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps CUDA_MPS_LOG_DIRECTORY=/tmp/nvidia-mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d && sleep 1
  python3 -m gpufleet mps status | tee "$OUT/mps_status.txt"
  echo "== with MPS"
  matrix mps "${MATRIX_MPS:-$FULL}"
  echo quit | nvidia-cuda-mps-control
  sleep 2
  python3 -m gpufleet mps status >> "$OUT/mps_status.txt" 2>&1
else
  echo "nvidia-cuda-mps-control not found: MPS runs skipped" | tee "$OUT/mps_status.txt"
fi

python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, os, sys
for tag in ("nomps", "mps"):
    p = os.path.join(sys.argv[1], f"w2_process_{tag}.jsonl")
    rows = [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []
    if not rows:
        continue
    print(f"== W2 items/s ({tag})   model@batch  backend  w=1 w=2 w=4 w=8")
    for key in sorted({(r["model"], r["batch"], r["backend"]) for r in rows}):
        cells = {r["workers_per_gpu"]: r for r in rows if (r["model"], r["batch"], r["backend"]) == key}
        fmt = lambda r: r.get("error", "")[:20] or f"{r['items_s']:.0f}"
        print(f"  {key[0]}@{key[1]:<3} {key[2]:<8}", "  ".join(fmt(cells[w]) if w in cells else "-" for w in (1, 2, 4, 8)))
PY
