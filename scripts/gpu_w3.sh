#!/usr/bin/env bash
# W3 jpeg224 and W5 burst (BENCH.md) on one GPU: gpufleet serve resnet50 + gpufleet load on the same machine.
source scripts/device_setup.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DUR=${DUR:-15}; WARM=${WARM:-3}
run_config() {  # $1 = label, $2 = python switch interval (s) of the serving (engine) process, $3 = extra serve args
  label=$1
  # shellcheck disable=SC2086  # $3 is split into words on purpose: they become extra argv entries
  python3 -c "import sys; extra=sys.argv[1:]; sys.setswitchinterval($2); sys.argv=['gpufleet','serve','resnet50','--port','8000','--max-batch-size','128','--max-wait-ms','2','--max-queue','8192','--log-level','warning']+extra; from gpufleet.cli import main; main()" ${3:-} > "$OUT/serve_$label.log" 2>&1 &
  SPID=$!
  # With --http-workers N, readiness turns 200 only once every front end listens.
  for i in $(seq 1 120); do
    curl -sf localhost:8000/v2/health/ready >/dev/null && break
    kill -0 $SPID 2>/dev/null || { echo "== $label: server exited: $(tail -3 "$OUT/serve_$label.log")"; return; }
    sleep 1
  done
  echo "== $label: server ready after ${i}s (${3:-single process})"
  L="python3 -m gpufleet load http://127.0.0.1:8000/predict --payload jpeg224 --duration $DUR --warmup $WARM"
  $L -c 8 --json > "$OUT/w3_${label}_c8.json"
  $L -c 256 --processes "${LOADP:-4}" --json > "$OUT/w3_${label}_c256p4.json" &
  # Per-process CPU over 4 s inside the measured window (the clients start in ~5 s: spawn + imports).
  LP=$!; sleep $((WARM + 5))
  if [ -n "${SPY:-}" ] && [ -x "$SPY" ]; then  # py-spy every process holding a CUDA context (the GPU children)
    for gp in $(nvidia-smi --query-compute-apps=pid --format=csv,noheader); do
      "$SPY" record -p "$gp" -d 4 -r 200 -f raw --nonblocking --threads --idle -o "$OUT/spy_${label}_$gp.txt" >/dev/null 2>&1 &
      "$SPY" record -p "$gp" -d 4 -r 200 -f raw --nonblocking --gil -o "$OUT/spy_${label}_${gp}_gil.txt" >/dev/null 2>&1 &
    done
  fi
  python3 scripts/cpu_window.py 4 $SPID $LP > "$OUT/cpu_${label}_c256.txt" 2>&1
  curl -s localhost:8000/monitor > "$OUT/monitor_${label}_c256.json"; wait $LP
  [ -n "${SKIP_P1:-}" ] || $L -c 256 --json > "$OUT/w3_${label}_c256p1.json"
  python3 -m gpufleet load http://127.0.0.1:8000/predict --payload jpeg224 --burst 50 --json > "$OUT/w5_${label}_b50.json"
  python3 -m gpufleet load http://127.0.0.1:8000/predict --payload jpeg224 --burst 500 --json > "$OUT/w5_${label}_b500.json"
  curl -s localhost:8000/stats > "$OUT/stats_$label.json"
  curl -s localhost:8000/metrics | grep -E "^gpufleet_(requests|queue|batch|gpu)" | head -30 > "$OUT/metrics_$label.txt"
  kill -TERM $SPID; wait $SPID; echo "server exit code $?"
  python3 - "$OUT" "$label" <<'PY'
import json, sys, os
out, label = sys.argv[1:3]
for name in ("c8", "c256p4", "c256p1"):
    if not os.path.exists(os.path.join(out, f"w3_{label}_{name}.json")):
        continue
    r = json.load(open(os.path.join(out, f"w3_{label}_{name}.json")))
    lat = r["latency"]
    print(f"W3 {label} {name}: {r['rps']:.0f} req/s p50 {lat['p50_ms']:.1f} p90 {lat['p90_ms']:.1f} p99 {lat['p99_ms']:.1f} ms errors {r['errors']}")
for name in ("b50", "b500"):
    r = json.load(open(os.path.join(out, f"w5_{label}_{name}.json")))
    s = r["batch_statistics"]
    print(f"W5 {label} {name}: {r['total_duration_s']:.3f}s ok {r['successful']}/{r['burst']} {r['throughput_rps']:.0f} req/s p99 {r['latency']['p99_ms']:.1f} ms batches {s.get('total_batches')} avg {s.get('avg_batch_size')}")
st = json.load(open(os.path.join(out, f"stats_{label}.json")))
print("stages p50/p99 ms:", {k: (round(v["p50_ms"], 2), round(v["p99_ms"], 2)) for k, v in st["stages"].items()})
print("per device:", [(g["device"], g["total_requests"], g["avg_batch_size"]) for g in st["per_gpu_stats"]])
try:
    mon = json.load(open(os.path.join(out, f"monitor_{label}_c256.json")))
    print("NVML during c=256:", json.dumps(mon)[:600])
except Exception as e:
    print("monitor:", e)
PY
  python3 -c "import json,sys; print('client CPU:', json.load(open(sys.argv[1])).get('client_cpu'))" "$OUT/w3_${label}_c256p4.json"
  head -1 "$OUT/cpu_${label}_c256.txt"
}
# CONFIGS picks which to run (default: all three measured on 2026-11-23); old_<config> runs <config> on the package
# copy in .old/ (make it with `mkdir .old && git archive <commit> gpufleet | xz -9 > .old/gpufleet.tar.xz` and carry
# .old: unpacked here; the archive keeps .old + .whl + .spy under the 64 MiB a device call carries).
for cfg in ${CONFIGS:-default si1ms hw8}; do
  case $cfg in
    default) run_config default 0.005 ;;
    si1ms) run_config si1ms 0.001 ;;
    hw4) run_config hw4 0.005 "--http-workers 4" ;;
    hw8) run_config hw8 0.001 "--http-workers 8" ;;  # 8 HTTP front-end processes over the engine process
    g1hw8) run_config g1hw8 0.001 "--gpus 0 --http-workers 8" ;;  # issue 10: 1 GPU vs 2, same front ends
    g2hw8) run_config g2hw8 0.001 "--gpus 0,1 --http-workers 8" ;;
    g2hw8p) run_config g2hw8p 0.001 "--gpus 0,1 --http-workers 8 --backend process" ;;  # one process per GPU
    g1hw8p) run_config g1hw8p 0.001 "--gpus 0 --http-workers 8 --backend process" ;;  # process engine, 1 GPU
    g2hw8p2) run_config g2hw8p2 0.001 "--gpus 0,1 --http-workers 8 --backend process --workers-per-device 2" ;;
    g1hw8p2) run_config g1hw8p2 0.001 "--gpus 0 --http-workers 8 --backend process --workers-per-device 2" ;;
    g1hw12) run_config g1hw12 0.001 "--gpus 0 --http-workers 12" ;;
    g2hw12) run_config g2hw12 0.001 "--gpus 0,1 --http-workers 12" ;;
    old_*) # the same config served by an older copy of the package in .old/ (carried): an A/B in one call
        if [ -f .old/gpufleet.tar.xz ]; then rm -rf .old/gpufleet; tar -xJf .old/gpufleet.tar.xz -C .old; fi  # never a stale copy
        [ -d .old/gpufleet ] || { echo "== $cfg: no .old/gpufleet carried"; continue; }
        base=${cfg#old_}; args=$(sed -n "s/^ *$base) run_config $base [0-9.]* \"\(.*\)\" ;;.*/\1/p" "$0")
        # PYTHONSAFEPATH: `python3 -c` would put the working directory (this checkout's gpufleet) first on sys.path
        echo "== $cfg: $(PYTHONSAFEPATH=1 PYTHONPATH=$PWD/.old:$PYTHONPATH python3 -c 'import gpufleet; print(gpufleet.__file__)')"
        PYTHONSAFEPATH=1 PYTHONPATH=$PWD/.old:$PYTHONPATH run_config "$cfg" 0.001 "$args" ;;
    *) echo "unknown config $cfg" ;;
  esac
done
