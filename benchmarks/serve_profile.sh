#!/usr/bin/env bash
# Where `gpufleet serve` spends its CPU under W3 load: serve MODEL with SERVE_ARGS (defaults: none, the user's
# command), gpufleet load --payload jpeg224 -c C for DUR seconds, and py-spy record of the engine process
# (all threads, and only the GIL holder) and of one front end for SECS seconds in the middle of the load.
# Prints the load's figures and, per profile, the top functions by own time and by time including callees,
# per thread. Writes $OUT/profile_*.txt (collapsed stacks) and $OUT/profile_summary.txt.
# Needs py-spy (its wheel in WHEELS) and ptrace permission on the server's processes.
# With the device tool:  run(command="WHEELS=.carry/c bash benchmarks/serve_profile.sh", carry=[".carry/c"])
# Knobs: OUT [/tmp/out]  MODEL [resnet50]  SERVE_ARGS [""]  C [256]  DUR [30]  SECS [12]  LOADP [12]
cd "$(dirname "$0")/.." || exit 1
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 COLUMNS=160
for dir in ${WHEELS:-.whl}; do  # as benchmarks/gpu_run.sh: the carried wheels go to /tmp/site
  if ls "$dir"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$dir"/*.whl || echo "warning: installing $dir failed" >&2
  fi
done
export PYTHONPATH=$PWD:/tmp/site PYTHONSAFEPATH=1 PATH=/tmp/site/bin:$PATH
DUR=${DUR:-30}; SECS=${SECS:-12}; C=${C:-256}
PORT=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
# shellcheck disable=SC2086
python3 -m gpufleet serve "${MODEL:-resnet50}" --port "$PORT" ${SERVE_ARGS:-} > "$OUT/profile_serve.log" 2>&1 &
SPID=$!
for _ in $(seq 1 300); do
  curl -sf "localhost:$PORT/v2/health/ready" >/dev/null && break
  kill -0 $SPID 2>/dev/null || { echo "server exited"; tail -20 "$OUT/profile_serve.log"; exit 1; }
  sleep 0.5
done
python3 -m gpufleet load "http://127.0.0.1:$PORT/predict" --payload jpeg224 -c "$C" --processes "${LOADP:-12}" \
  --duration "$DUR" --warmup 2 --json > "$OUT/profile_load.json" 2> "$OUT/profile_load.err" &
LPID=$!
sleep $(( (DUR - SECS) / 2 + 2 ))
# a front end: a child of the server that is not multiprocessing's resource tracker
FRONT=$(for p in $(pgrep -P $SPID); do grep -q resource_tracker /proc/$p/cmdline 2>/dev/null || echo $p; done | head -1)
py-spy record --pid $SPID --threads --format raw --rate 200 --duration "$SECS" --nonblocking \
  -o "$OUT/profile_engine.txt" > /dev/null 2> "$OUT/profile_spy.err" &
py-spy record --pid $SPID --threads --gil --format raw --rate 200 --duration "$SECS" --nonblocking \
  -o "$OUT/profile_engine_gil.txt" > /dev/null 2>> "$OUT/profile_spy.err" &
[ -n "$FRONT" ] && py-spy record --pid "$FRONT" --threads --format raw --rate 200 --duration "$SECS" \
  --nonblocking -o "$OUT/profile_front.txt" > /dev/null 2>> "$OUT/profile_spy.err" &
top -b -n 1 -d "$SECS" -H -p $SPID 2>/dev/null | head -30 > "$OUT/profile_top.txt" &
# the whole machine's CPU use over the same seconds (load generator and front ends included), from /proc/stat
( a=$(head -1 /proc/stat); sleep "$SECS"; b=$(head -1 /proc/stat)
  python3 benchmarks/cpu_busy.py "$a" "$b" > "$OUT/profile_cpu.txt" ) &
command -v nvidia-smi > /dev/null && timeout "$SECS" nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader \
  -lms 500 > "$OUT/profile_gpu_util.txt" 2>/dev/null &
wait $LPID
curl -s "localhost:$PORT/stats" > "$OUT/profile_stats.json"
kill -TERM $SPID; for _ in $(seq 1 60); do kill -0 $SPID 2>/dev/null || break; sleep 0.5; done; kill -9 $SPID 2>/dev/null
python3 - "$OUT" > "$OUT/profile_summary.txt" <<'PY'
import json, sys
out = sys.argv[1]
load = json.load(open(f"{out}/profile_load.json"))
print("load:", json.dumps({k: v for k, v in load.items() if not isinstance(v, (list, dict))}))
print("latency:", json.dumps(load.get("latency")))
try:
    w = json.load(open(f"{out}/profile_stats.json"))["per_worker_stats"][0]
    print("worker:", json.dumps({k: v for k, v in w.items() if not isinstance(v, (list, dict))})[:900])
except Exception as exc:  # noqa: BLE001
    print("stats:", exc)
PY
[ -s "$OUT/profile_gpu_util.txt" ] && echo "GPU utilization: $(tr -d ' %' < "$OUT/profile_gpu_util.txt" | sort -n \
  | awk '{a[NR]=$1} END {print "median " a[int((NR+1)/2)] "%, samples " NR}')" >> "$OUT/profile_summary.txt"
cat "$OUT/profile_cpu.txt" >> "$OUT/profile_summary.txt" 2>/dev/null
for name in engine engine_gil front; do
  python3 benchmarks/profile_summary.py "$OUT/profile_$name.txt" >> "$OUT/profile_summary.txt"
done
cat "$OUT/profile_top.txt" >> "$OUT/profile_summary.txt"
cat "$OUT/profile_spy.err" >> "$OUT/profile_summary.txt"
cat "$OUT/profile_summary.txt"
