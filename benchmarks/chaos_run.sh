#!/usr/bin/env bash
# Restarts under load on a GPU: gpufleet serve resnet50 --gpus 0 --backend process (default front ends),
# gpufleet load --payload jpeg224 -c 256 for DUR seconds, KILLS kill -9 of the GPU worker spread over it.
# Writes $OUT/chaos_summary.txt (req/s, p50/p99, non-200 count, each restart's time and breakdown),
# $OUT/chaos_load.json, $OUT/chaos_stats.json, $OUT/chaos_serve.log, $OUT/chaos_kills.txt.
# With the device tool (~3 minutes):
#   run(command="bash benchmarks/chaos_run.sh", carry=[".whl"], timeout_s=420)
# Knobs: OUT [/tmp/out]  DUR [60]  KILLS [10]  LOADP [12] load processes  SERVE_ARGS [""] more serve flags
#        GPUFLEET_SPARE_PROCESS [unset: imports-only spare for GPUs] 0 no spare, 1 imports-only, warm (the
#          spare sets the model up on the GPU too: a second copy in GPU memory, restarts are the hand-over)
#        KILL_WHEN [gap] gap: a kill every GAP seconds (kills may land while a child still sets up);
#          ready: each kill waits until /stats shows the worker up (and, with a warm spare, the spare warm),
#          then GAP more seconds
#        GAP [DUR / (KILLS + 1), at least 1]
# GPU restart phases without a server: python3 benchmarks/restart_profile.py
cd "$(dirname "$0")/.." || exit 1
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 COLUMNS=160
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
for dir in ${WHEELS:-.whl}; do  # as benchmarks/gpu_run.sh: the carried wheels go to /tmp/site
  if ls "$dir"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$dir"/*.whl || echo "warning: installing $dir failed" >&2
  fi
done
export PYTHONPATH=$PWD:/tmp/site PYTHONSAFEPATH=1
DUR=${DUR:-60}; KILLS=${KILLS:-10}
PORT=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
# A deadline that allows a restart: 30 s per request.
# shellcheck disable=SC2086
python3 -m gpufleet serve resnet50 --gpus 0 --backend process --port "$PORT" --timeout-s 30 --log-level info \
  ${SERVE_ARGS:-} > "$OUT/chaos_serve.log" 2>&1 &
SPID=$!
for _ in $(seq 1 300); do
  curl -sf "localhost:$PORT/v2/health/ready" >/dev/null && break
  kill -0 $SPID 2>/dev/null || { echo "server exited"; tail -20 "$OUT/chaos_serve.log"; exit 1; }
  sleep 0.5
done
wpid() { curl -s "localhost:$PORT/health" | python3 -c "import json,sys; print(json.load(sys.stdin)['backends'][0]['pid'])"; }
python3 -m gpufleet load "http://127.0.0.1:$PORT/predict" --payload jpeg224 -c 256 --processes "${LOADP:-12}" \
  --duration "$DUR" --warmup 2 --max-error-rate 1 --json > "$OUT/chaos_load.json" 2> "$OUT/chaos_load.err" &
LPID=$!
GAP=${GAP:-$(python3 -c "print(max(1.0, $DUR / ($KILLS + 1)))")}
KILL_WHEN=${KILL_WHEN:-gap}
# ready: the worker serves again after the last kill (its restart count reached RESTARTS) and, with a warm-mode
# spare, the spare is warm; gives up after 180 s
RESTARTS=0
wready() {
  for _ in $(seq 1 360); do
    curl -s "localhost:$PORT/stats" | python3 -c "
import json, sys
w = json.load(sys.stdin)['per_worker_stats'][0]
up = w['healthy'] and w.get('restarts', 0) >= $RESTARTS
sys.exit(0 if up and (w.get('spare_mode') != 'warm' or w.get('spare') == 'warm') else 1)" && return 0
    sleep 0.5
  done
  echo "not ready after 180 s" >> "$OUT/chaos_kills.txt"
}
sleep 2
: > "$OUT/chaos_kills.txt"
for k in $(seq 1 "$KILLS"); do
  [ "$KILL_WHEN" = ready ] && wready
  sleep "$GAP"
  kill -0 $LPID 2>/dev/null || { echo "load ended before kill $k" >> "$OUT/chaos_kills.txt"; break; }
  P=$(wpid); kill -9 "$P" && echo "kill $k: pid $P at $(date +%s.%N)" >> "$OUT/chaos_kills.txt"
  RESTARTS=$k  # the next wready waits for this kill's restart
  curl -s "localhost:$PORT/health" | head -c 600 >> "$OUT/chaos_kills.txt"; echo >> "$OUT/chaos_kills.txt"
done
wait $LPID
sleep 1
curl -s "localhost:$PORT/stats" > "$OUT/chaos_stats.json"
kill -TERM $SPID; for _ in $(seq 1 60); do kill -0 $SPID 2>/dev/null || break; sleep 0.5; done; kill -9 $SPID 2>/dev/null
KILL_WHEN=$KILL_WHEN GAP=$GAP python3 - "$OUT" > "$OUT/chaos_summary.txt" <<'PY'
import json, os, sys
out = sys.argv[1]
print("kill_when", os.environ["KILL_WHEN"], "gap_s", os.environ["GAP"], "spare_process",
      os.environ.get("GPUFLEET_SPARE_PROCESS", "(default)"))
try:
    load = json.load(open(f"{out}/chaos_load.json"))
except Exception as exc:
    load = {"error": repr(exc)}
print("load:", json.dumps({k: v for k, v in load.items() if not isinstance(v, (list, dict))}))
for k in ("latency", "errors", "error_samples"):
    if k in load:
        print(k, json.dumps(load[k]))
st = json.load(open(f"{out}/chaos_stats.json"))
w = st["per_worker_stats"][0]
print("restarts", st["restarts"], "setup_kills", w.get("setup_kills"), "restart_s_total", w.get("restart_s_total"),
      "engine errors", st["errors"], "spare_mode", w.get("spare_mode"), "spare now", w.get("spare"))
print("first start:", json.dumps(w.get("setup_breakdown")))
# one line per restart that served again: its total, then each phase (seconds); warm_ahead is setup a warm
# spare did before the kill (not part of the total), failed_starts start-ups killed before they were ready
for i, r in enumerate(w.get("restart_history", []), 1):
    phases = "  ".join(f"{k} {v:.3f}" for k, v in r.items() if k != "total")
    print(f"restart {i}: total {r.get('total', 0):.3f}s  {phases}")
PY
cat "$OUT/chaos_summary.txt"
