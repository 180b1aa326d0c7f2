#!/usr/bin/env bash
# NVIDIA Triton (tritonserver 2.51 through PyTriton 0.7.0, benchmarks/triton_server.py) beside `gpufleet serve
# resnet50`, on one GPU, loaded by the same client with the same requests: `gpufleet load grpc://... --payload
# jpeg224 --processes LOADP` at each concurrency of CONCS for DUR seconds (after WARM), one server at a time.
# Both serve ResNet-50 (random weights, seed 0) from one 224x224 JPEG per KServe v2 ModelInfer: GPU JPEG decode in
# batches, normalise, forward in bf16 (gpufleet's default on cc >= 8; fp16 on 7.x) channels_last, top-1 class and
# score; dynamic batching up to 64 with a 2 ms wait (gpufleet's GPU defaults); Triton with TRITON_INSTANCES model
# instances, per TRITON_MODES (graphs: CUDA graphs per batch bucket as gpufleet; eager). Order: Triton in the first
# mode, gpufleet (gRPC, then /predict over HTTP for reference), Triton in the other modes. Triton runs from a venv
# ($TVENV) that sees $TSITE (PyTriton, pyzmq, numpy 1.26, ...) before the image's packages; gpufleet never sees it.
# Writes $OUT/triton_summary.txt (one line per server and concurrency: req/s, p50, p99, non-200 count, average
# batch, GPU memory; the servers' set-up lines), $OUT/triton_run.log and $OUT/triton_details.tgz (the loads' JSON
# reports, server logs, gpufleet /stats: the device tool brings back at most 8 files). The same requests to both:
# `gpufleet load --payload jpeg224` over gRPC sends each JPEG as one [1, 1] BYTES item.
#
# With the device tool, two calls on one warm machine (the pytriton wheel is 53 MB, over what one call carries
# beside the rest); wheels from benchmarks/fetch_triton_wheels.sh (.carry/pt, .carry/t) and gpufleet's server
# wheels (uvicorn, starlette, msgspec, httptools, orjson: .carry/c or .whl, benchmarks/fetch_wheels.sh):
#   run(command="mkdir -p /tmp/pt && cp .carry/pt/*.whl /tmp/pt/", carry=[".carry/pt"])
#   run(command="WHEELS=.carry/c bash benchmarks/triton_run.sh", carry=[".carry/c", ".carry/t"], timeout_s=600)
# Knobs: OUT [/tmp/out]  DUR [8]  WARM [2]  CONCS ["8 256"]  LOADP [12] load processes
#        TRITON_MODES ["graphs eager"]  TRITON_INSTANCES [2]  GPUFLEET [1] also serve gpufleet  HTTP_REF [1] also
#        gpufleet's /predict over HTTP (JSON + base64) for reference
#        DEVICE [cuda] (cpu: a CPU-only test of this script)  ARCH [resnet50] (resnet18 for quick CPU tests)
#        WHEELS [.whl] gpufleet's wheel folders -> /tmp/site  TRITON_WHEELS [.carry/t]  PT_WHEELS [/tmp/pt] -> TSITE
#        TSITE [/tmp/tsite]  TVENV [/tmp/tvenv]  PY [python3]  BASE_PORT [8100]
#        BUDGET [470] seconds after which no further server starts (the summary is still written)
# CPU test here (~2 min; 3.11 wheels: PYVER=3.11 T=/tmp/t311 PT=/tmp/pt311 bash benchmarks/fetch_triton_wheels.sh):
#   OUT=/tmp/out_cpu PY=.venv/bin/python DEVICE=cpu ARCH=resnet18 DUR=3 WARM=1 CONCS="4 16" LOADP=2 WHEELS= \
#     TRITON_WHEELS=/tmp/t311 PT_WHEELS=/tmp/pt311 TSITE=/tmp/tsite_cpu bash benchmarks/triton_run.sh
cd "$(dirname "$0")/.." || exit 1
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 COLUMNS=160
PY=${PY:-python3}; DUR=${DUR:-8}; WARM=${WARM:-2}; CONCS=${CONCS:-8 256}; LOADP=${LOADP:-12}
MODES=${TRITON_MODES:-graphs eager}; INST=${TRITON_INSTANCES:-2}; DEVICE=${DEVICE:-cuda}; ARCH=${ARCH:-resnet50}
TSITE=${TSITE:-/tmp/tsite}; TVENV=${TVENV:-/tmp/tvenv}; BASE_PORT=${BASE_PORT:-8100}
SUMMARY=$OUT/triton_summary.txt; LOG=$OUT/triton_run.log
WORK=${WORK:-/tmp/triton_work}; rm -rf "$WORK"; mkdir -p "$WORK"  # details, packed into $OUT/triton_details.tgz
BUDGET=${BUDGET:-470}  # seconds after which no further server starts (the device tool stops a call at 600 s)
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }

# -- the machine ------------------------------------------------------------------------------------------------
{
  echo "== $(date -u +%FT%TZ) $(hostname) nproc $(nproc) commit $(git rev-parse --short HEAD 2>/dev/null)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader
  else echo "no nvidia-smi"; fi
  "$PY" -c 'import sys, numpy, torch, torchvision; print(sys.version.split()[0], "torch", torch.__version__,
"torchvision", torchvision.__version__, "numpy", numpy.__version__)'
} > "$SUMMARY" 2>&1
gpu_mem() {  # GPU memory in use now (MiB), all processes
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1 || echo n/a
}

# -- gpufleet's wheels, as chaos_run.sh: /tmp/site ---------------------------------------------------------------
for dir in ${WHEELS:-.whl}; do
  if ls "$dir"/*.whl >/dev/null 2>&1; then
    timeout 300 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$dir"/*.whl >> "$LOG" 2>&1 || say "warning: installing $dir failed"
  fi
done
GF_PATH=$PWD:/tmp/site

# -- Triton's: $TSITE, seen only by the Triton server (its protobuf 6, grpcio, numpy 1.26 stay out of gpufleet's) -
TRITON_OK=1
TW=${TRITON_WHEELS:-.carry/t}
PTW=$(find "${PT_WHEELS:-/tmp/pt}" -maxdepth 1 -name 'nvidia_pytriton-0.7.0-*.whl' 2>/dev/null | head -1)
STAMP=$({ find "$TW" -maxdepth 1 -name '*.whl' -printf '%f %s\n' 2>/dev/null; echo "$PTW"; } | sort | md5sum)
if [ -z "$PTW" ]; then
  say "no nvidia_pytriton wheel in ${PT_WHEELS:-/tmp/pt}: run the first call (cp .carry/pt/*.whl /tmp/pt/) on this warm machine"
  TRITON_OK=0
elif ! ls "$TW"/*.whl >/dev/null 2>&1; then
  say "no wheels in $TW (bash benchmarks/fetch_triton_wheels.sh; carry it)"; TRITON_OK=0
elif [ "$(cat "$TSITE/.done" 2>/dev/null)" != "$STAMP" ]; then  # installed once per wheel set
  rm -rf "$TSITE"
  if timeout 300 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$TSITE" \
      "$TW"/*.whl "$PTW" >> "$LOG" 2>&1; then
    echo "$STAMP" > "$TSITE/.done"
  else
    say "installing Triton's wheels into $TSITE failed (see $LOG)"; TRITON_OK=0
  fi
fi
# PyTriton puts its interpreter's bin/ first on tritonserver's PATH, and the Python-backend stub takes its sys.path
# from the python3 found there (PYTHONPATH does not reach it; without this the stub fails "No module named 'zmq'"):
# a venv whose site-packages names $TSITE first, then the image's site-packages (torch, torchvision).
TPY=$PY
if [ "$TRITON_OK" = 1 ]; then
  if ! timeout 60 "$PY" -m venv --without-pip --clear "$TVENV" >> "$LOG" 2>&1; then
    say "python3 -m venv failed: a venv by hand"  # what venv writes: bin/python3 -> the base interpreter, pyvenv.cfg
    rm -rf "$TVENV"; mkdir -p "$TVENV/bin"
    BASE=$("$PY" -c 'import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))')
    VER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    mkdir -p "$TVENV/lib/python$VER/site-packages"
    ln -s "$BASE" "$TVENV/bin/python3"; ln -s python3 "$TVENV/bin/python"
    printf 'home = %s\ninclude-system-site-packages = false\nversion = %s\n' "$(dirname "$BASE")" "$VER" \
      > "$TVENV/pyvenv.cfg"
  fi
  SP=$("$TVENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  { echo "$TSITE"
    PYTHONPATH='' "$PY" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))'
  } > "$SP/zz_triton_bench.pth"
  TPY=$TVENV/bin/python
  # The Python-backend stub links libpython3.X.so.1.0: sysconfig's LIBDIR, else wherever one is found.
  LIBDIR=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
  SONAME=libpython$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])').so.1.0
  if [ ! -e "$LIBDIR/$SONAME" ]; then
    FOUND=$(timeout 30 find /usr /opt /root -name "$SONAME" 2>/dev/null | head -1)
    say "no $SONAME in $LIBDIR; found: ${FOUND:-none (the stub will not start)}"
    [ -n "$FOUND" ] && LIBDIR=$(dirname "$FOUND")
  fi
  export LD_LIBRARY_PATH=$LIBDIR:$TSITE/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  PYV=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  STUB=$TSITE/pytriton/tritonserver/python_backend_stubs/$PYV/triton_python_backend_stub
  { echo "stub $STUB:"; ldd "$STUB" | grep -E "python|not found"; } >> "$LOG" 2>&1
  env PYTHONPATH="$TSITE" "$TPY" -c 'import numpy, zmq, pytriton, tritonclient.grpc, torch; print("triton env: numpy",
numpy.__version__, "pytriton", pytriton.__file__)' >> "$SUMMARY" 2>&1 || { say "the Triton env does not import"; TRITON_OK=0; }
fi

# -- helpers ---------------------------------------------------------------------------------------------------
SPID=""
stop_server() {  # SIGTERM to the server's process group (setsid), then SIGKILL after 45 s
  [ -n "$SPID" ] || return 0
  kill -TERM -- "-$SPID" 2>/dev/null
  for _ in $(seq 1 90); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$SPID" 2>/dev/null
  wait "$SPID" 2>/dev/null
  SPID=""
}
trap stop_server EXIT
wait_ready() {  # URL, seconds, log: until URL answers 200 or the server exits
  for _ in $(seq 1 $(($2 * 2))); do
    curl -sf -o /dev/null "$1" && return 0
    kill -0 "$SPID" 2>/dev/null || { say "server exited before ready"; tail -30 "$3" >> "$LOG"; return 1; }
    sleep 0.5
  done
  say "not ready after $2 s: $1"; tail -30 "$3" >> "$LOG"; return 1
}
run_load() {  # name url model c [http]
  local name=$1 url=$2 model=$3 c=$4
  local args=(--payload jpeg224 -c "$c" --duration "$DUR" --warmup "$WARM" --processes "$((LOADP < c ? LOADP : c))"
              --max-error-rate 1 --json)
  [ "${5:-}" = http ] || args+=(--model "$model")
  say "load $name c=$c ($(date -u +%T))"
  timeout $((DUR + WARM + 150)) env PYTHONPATH="$GF_PATH" "$PY" -m gpufleet load "$url" "${args[@]}" \
    > "$WORK/load_${name}_c$c.json" 2> "$WORK/load_${name}_c$c.err" || say "  load exit $?"
  echo "$name c=$c gpu_mem_mib $(gpu_mem)" >> "$WORK/mem.txt"
}
: > "$WORK/mem.txt"

# -- the servers: Triton's first mode, gpufleet, Triton's other modes (the main pair first, inside the budget) ----
TP_HTTP=$BASE_PORT; TP_GRPC=$((BASE_PORT + 1)); GP_HTTP=$((BASE_PORT + 10)); GP_GRPC=$((BASE_PORT + 11))
triton() {  # mode
  local name=triton-$1-i$INST
  [ "$TRITON_OK" = 1 ] || return 0
  [ "$SECONDS" -lt "$BUDGET" ] || { say "skipped $name: ${SECONDS}s > BUDGET $BUDGET"; return 0; }
  say "== $name: $TPY benchmarks/triton_server.py --mode $1 --instances $INST --device $DEVICE"
  echo "$name idle gpu_mem_mib $(gpu_mem)" >> "$WORK/mem.txt"
  # Up to 3 starts: with several instances PyTriton races (an instance's stub may connect to the first one's
  # handshake socket before it listens: "ConnectionRefusedError" at load, seen once in 6 starts on CPU).
  local ok=1
  for attempt in 1 2 3; do
    setsid env PYTHONPATH="$TSITE" "$TPY" benchmarks/triton_server.py --grpc-port "$TP_GRPC" --http-port "$TP_HTTP" \
      --max-batch-size 64 --delay-us 2000 --instances "$INST" --device "$DEVICE" --mode "$1" --arch "$ARCH" \
      > "$WORK/$name.log" 2>&1 &
    SPID=$!
    wait_ready "http://127.0.0.1:$TP_HTTP/v2/models/resnet50/ready" 240 "$WORK/$name.log" && ok=0 && break
    stop_server
    cp "$WORK/$name.log" "$WORK/$name.start$attempt.log"
    say "start $attempt of $name failed"
  done
  if [ "$ok" = 0 ]; then
    grep -m1 "model ready" "$WORK/$name.log" | tee -a "$LOG"
    for c in $CONCS; do run_load "$name" "grpc://127.0.0.1:$TP_GRPC" resnet50 "$c"; done
  fi
  stop_server
  grep "items/batches per instance" "$WORK/$name.log" | tail -1 | sed "s/^/$name /" >> "$WORK/mem.txt"
}
gpufleet() {
  local name=gpufleet
  [ "${GPUFLEET:-1}" = 1 ] || return 0
  [ "$SECONDS" -lt "$BUDGET" ] || { say "skipped $name: ${SECONDS}s > BUDGET $BUDGET"; return 0; }
  say "== $name: gpufleet serve $ARCH --grpc-port (defaults)"
  echo "$name idle gpu_mem_mib $(gpu_mem)" >> "$WORK/mem.txt"
  setsid env PYTHONPATH="$GF_PATH" PYTHONSAFEPATH=1 "$PY" -m gpufleet serve "$ARCH" --port "$GP_HTTP" \
    --grpc-port "$GP_GRPC" --log-level warning > "$WORK/$name.log" 2>&1 &
  SPID=$!
  if wait_ready "http://127.0.0.1:$GP_HTTP/v2/health/ready" 300 "$WORK/$name.log"; then
    for c in $CONCS; do
      run_load "$name" "grpc://127.0.0.1:$GP_GRPC" "$ARCH" "$c"
      curl -s "127.0.0.1:$GP_HTTP/stats" > "$WORK/stats_${name}_c$c.json"
    done
    if [ "${HTTP_REF:-1}" = 1 ] && [ "$SECONDS" -lt "$BUDGET" ]; then
      for c in $CONCS; do run_load "$name-http" "http://127.0.0.1:$GP_HTTP/predict" "$ARCH" "$c" http; done
    fi
  fi
  stop_server
}
read -r -a modes <<< "$MODES"
triton "${modes[0]}"
gpufleet
for mode in "${modes[@]:1}"; do triton "$mode"; done

# -- summary ---------------------------------------------------------------------------------------------------
"$PY" - "$WORK" >> "$SUMMARY" 2>&1 <<'PY'
import glob, json, os, re, sys
work = sys.argv[1]
mem = {}
for line in open(f"{work}/mem.txt"):
    parts = line.split()
    if len(parts) >= 4 and parts[2] == "gpu_mem_mib":
        mem[(parts[0], parts[1])] = parts[3]
    elif "items/batches" in line:
        m = re.search(r"avg batch ([0-9.]+)", line)
        mem[(parts[0], "avg_batch")] = m.group(1) if m else "?"
print(f"{'server':<24} {'c':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-200':>8} {'avg batch':>9} {'GPU MiB':>8}")


def key(p):
    m = re.match(r".*/load_(.+)_c(\d+)\.json$", p)
    return (m.group(1), int(m.group(2)))


files = sorted(glob.glob(f"{work}/load_*_c*.json"), key=lambda p: (not key(p)[0].startswith("triton"), key(p)))
for path in files:
    name, c = key(path)
    try:
        r = json.load(open(path))
    except Exception as exc:
        err = open(path[:-5] + ".err").read().strip().splitlines()[-1:] if os.path.exists(path[:-5] + ".err") else ""
        print(f"{name:<24} {c:>4} no report ({type(exc).__name__}) {err}")
        continue
    lat = r.get("latency", {})
    bad = sum(v for v in r.get("errors", {}).values())
    avg = mem.get((name, "avg_batch"), "")
    if os.path.exists(f"{work}/stats_{name}_c{c}.json"):
        try:
            avg = f"{json.load(open(f'{work}/stats_{name}_c{c}.json')).get('avg_batch_size', 0):.1f}"
        except Exception:
            pass
    print(f"{name:<24} {c:>4} {r.get('rps', 0):>9.1f} {lat.get('p50_ms', 0):>8.2f} {lat.get('p99_ms', 0):>8.2f} "
          f"{bad:>8} {avg:>9} {mem.get((name, f'c={c}'), 'n/a'):>8}")
    if r.get("error_samples"):
        print(f"    errors: {r['error_samples'][:2]}")
print("GPU MiB: memory.used right after that load (server still up); before each server:",
      {k[0]: v for k, v in mem.items() if k[1] == "idle"})
print("avg batch: Triton: items/batches of its instances over the whole run (warm-ups included); gpufleet: /stats "
      "avg_batch_size so far")
for log in sorted(glob.glob(f"{work}/triton-*.log")):
    for line in open(log, errors="replace"):
        if "triton_server" in line and any(k in line for k in ("model ready", "CUDA graph", "items/batches")):
            print(os.path.basename(log)[:-4], line.split(" triton_server ", 1)[-1].strip())
PY
tar -czf "$OUT/triton_details.tgz" -C "$WORK" . 2>> "$LOG"
cat "$SUMMARY"
