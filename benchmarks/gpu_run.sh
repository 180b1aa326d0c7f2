#!/usr/bin/env bash
# The benchmark figures of docs/benchmarks.md in one run on a GPU machine, optionally old beside new.
usage() {
  cat <<'EOF'
Usage: bash benchmarks/gpu_run.sh [-h|--help]

Runs, on a GPU machine, the workloads of docs/benchmarks.md through the commands a user types, and writes
$OUT/summary.txt (a few lines per workload) and $OUT/results.tgz (every raw JSON report and log):

  pool   gpufleet bench: ResNet-50 through Pool.map at batch 64 and 128 beside the model's own ceiling
         (eager and CUDA-graph replay, input already on the GPU); --scale adds 2, 4 ... GPUs when present.
  serve  gpufleet serve resnet50, then gpufleet load --payload jpeg224 at -c 8 and -c 256 (req/s, p50, p99,
         errors) and --burst 50 and 500, once with the defaults and once tuned (8 HTTP front ends, larger
         batches).
  video  gpufleet video --model resnet18 on the 1080p H.264 file (1 input and 8 inputs, ROUNDS times each,
         in turn with the NVDEC decode-only ceiling, benchmarks/video_ceiling.py; then 8 inputs at
         --batch-size 128); the summary compares the medians.
  jpeg   benchmarks/jpeg_ceiling.py: W3's JPEG decode ceiling (torchvision batched decode_jpeg on the GPU, 1 and
         2 threads) and the engine on those JPEGs without HTTP (decoding in launch, a batch ahead, as they come;
         and decoded input).
  unequal gpufleet video on one input of 600 frames and three of 120, with --steal-frames 0 and 30 (ROUNDS
         times). Not run unless named.
  video2p the same 8 inputs as one process and as two processes of 4 started together, decode-only and through
         gpufleet video (ROUNDS times; the summary adds the two processes' rates). Not run unless named.
  overlap benchmarks/decode_overlap.py: does the GPU JPEG decode of the next batch overlap the model's replay
         (torchvision; nvImageCodec on default and high-priority streams when importable)? Not run unless named.
  contention benchmarks/video_contention.py: 8 NVDEC decoders alone, with the pipeline's resize, with ResNet-18
         beside them, and gpufleet video, with the video and SM clocks (not run unless named).
  convoy benchmarks/gil_convoy.py: how much a busy Python thread stretches a launch of many GIL-releasing calls
         in the same process (this host's CPU; not run unless named).
  stack  benchmarks/stack_batch.py: a batch stacked as per-item memcpys against one serial torch.stack, alone and
         beside a busy Python thread (this host's CPU; not run unless named).
  tune   gpufleet tune resnet50 --slo-p99-ms 50 (TUNE_BUDGET s), then W3 through serve --config tuned.toml beside
         the defaults (not run unless named in STEPS).
  tests  pytest -m gpu on the test files that have GPU tests (not run unless named in STEPS).
  ray    the Ray backend beside the process backend (not run unless named in STEPS; needs ray importable,
         e.g. its wheel and jsonschema, referencing, rpds-py, jsonschema-specifications, attrs in WHEELS):
         gpufleet bench --backend process|ray, benchmarks/backend_overhead.py (per-call cost), and
         gpufleet serve resnet50 --backend ray|process with the tuned flags under the same load.

A/B: when .old/gpufleet.tar.xz is present (an older commit's package:
  mkdir -p .old && git archive <commit> gpufleet | xz -9 > .old/gpufleet.tar.xz),
pool and serve run for "old" and "new" in turn, in this one call; the old copy serves, and loads itself.

Wheels the machine lacks (uvicorn, starlette, msgspec, PyAV, PyNvVideoCodec ...) are installed from .whl/
(make it with benchmarks/fetch_wheels.sh). With the device tool:
  run(command="bash benchmarks/gpu_run.sh", carry=[".whl", ".old"], timeout_s=600)

Environment knobs (defaults in brackets):
  OUT [/tmp/out]  WORK [/tmp/work] scratch  STEPS ["pool serve video jpeg"]  WHEELS [.whl]
  AB [1: A/B when .old is there; 0: new only]  AB_STEPS ["pool serve"; "pool": serve runs new only]
  SECS [3] seconds per bench point   BENCH_ARGS ["--model resnet50 --precision fp16 --cuda-graphs
  --batch-sizes 64,128 --scale"]   DUR [8] / WARM [2] load seconds   LOADP [12] load processes at c=256
  SERVE_CONFIGS ["default tuned"; also frontdec: JPEGs decoded on the front ends' CPUs,
  GPUFLEET_JPEG_DECODE=frontend, with FRONTDEC_ARGS [""]; process: --backend process; w2: two thread workers
  on each GPU (--workers-per-device 2; they share the process's one JPEG decoder); proc2: two process workers
  on each GPU (each with its own JPEG decoder and GIL); da: JPEGs decoded
  one batch ahead on a side thread, GPUFLEET_DECODE_AHEAD=1; dae: JPEGs decoded as they come on a side thread,
  in chunks the engine joins into batches, GPUFLEET_DECODE_AHEAD=eager; hw<N>: --http-workers N; si<ms>: the
  engine's thread switch interval, GPUFLEET_SWITCH_INTERVAL_MS=<ms>; dasi<ms>: both; cmc<N>:
  CUDA_DEVICE_MAX_CONNECTIONS=<N> (hardware work queues per GPU; gpufleet sets 32 unless it is set, cmc8 is
  CUDA's own default); eager: ResNet-50 without CUDA graphs; side: decoded and stacked on a stream of its
  own; pad: decode calls of the batch size (all three benchmarks/classifier_variants.py); mps+NAME: config
  NAME with the MPS daemon running (gpufleet mps start/stop around it); NAME.2, NAME.3 ...: config NAME
  again, reported apart]
  ROUNDS [3] rounds of the video figures   VIDEO_VARIANTS [""; streams: also, each round, the 8-input ceiling
  and gpufleet video with GPUFLEET_NVDEC_STREAMS=own, every decoder on a CUDA stream of its own]
  VIDEO_STEALS [""] e.g. "0 15": also, each round, gpufleet video (8 inputs, 1 input) with --steal-frames N,
  and the 8-input ceiling balanced the same way (video_ceiling.py --steal N; not for 0)
  TUNED_ARGS ["--http-workers 8 --max-batch-size 128 --max-wait-ms 2"]
  VIDEO_MODEL [resnet18]
  CONTENTION_ONLY [""; all] the contention step's variants, ';'-separated (e.g. "decode-only;gpufleet video");
  it runs each ROUNDS times [2 there]   CONTENTION_TIMEOUT [400] seconds for the whole step
EOF
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.." || exit 1
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=${WORK:-/tmp/work}; rm -rf "$W"; mkdir -p "$W"
T0=$(date +%s)
export PYTHONUNBUFFERED=1 COLUMNS=160
# Multi-GPU hosts here: NVLink multicast stays off; gpufleet needs no NCCL at all.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

# The carried wheels go to /tmp/site (kept while the machine is warm).
for dir in ${WHEELS:-.whl}; do
  if ls "$dir"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$dir"/*.whl || echo "warning: installing $dir failed" >&2
  fi
done

LABELS=new SERVE_LABELS=new
if [ "${AB:-1}" != 0 ] && [ -f .old/gpufleet.tar.xz ]; then
  rm -rf .old/gpufleet && tar -xJf .old/gpufleet.tar.xz -C .old && LABELS="old new"  # never a stale copy
  case " ${AB_STEPS:-pool serve} " in *" serve "*) SERVE_LABELS=$LABELS ;; esac
fi
# pkg LABEL CMD...: run CMD with that copy of the package first on sys.path. PYTHONSAFEPATH keeps `python3 -m`
# and `-c` from putting the working directory (this checkout's gpufleet) first for the old copy.
pypath() { if [ "$1" = old ]; then echo "PYTHONPATH=$PWD/.old:/tmp/site"; else echo "PYTHONPATH=$PWD:/tmp/site"; fi; }
pkg() { local p; p=$(pypath "$1"); shift; env PYTHONSAFEPATH=1 "$p" "$@"; }

stamp() { echo "== $1 (t=$(( $(date +%s) - T0 ))s)" | tee -a "$W/steps.txt"; }
summary() {
  { head -3 "$W/machine.txt"; cat "$W/packages.txt" "$W/steps.txt"; python3 benchmarks/summarize.py "$W"; } \
    > "$OUT/summary.txt" 2>&1
  tar czf /tmp/results.tgz -C "$W" . 2>/dev/null && mv /tmp/results.tgz "$OUT/results.tgz"
}

{ nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader; nproc
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  nvidia-smi topo -m; } > "$W/machine.txt" 2>&1
for label in $LABELS; do
  echo "$label: $(pkg "$label" python3 -c 'import gpufleet; print(gpufleet.__file__)' 2>&1)" >> "$W/packages.txt"
done

serve_one() {  # $1 = label, $2 = config name, $3 = extra serve flags, $4 = VAR=value for the server's env
  local label=$1 cfg=$2 tag="$1_$2" spid i PORT
  # A port nothing listens on, so the readiness check and the load reach this server and no other.
  PORT=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  # Started as a plain command (env execs python3), so $! is the server itself and the TERM below reaches it.
  # shellcheck disable=SC2086  # $3 is split into flags on purpose
  env PYTHONSAFEPATH=1 "$(pypath "$label")" ${4:-} python3 -m gpufleet serve "${model:-resnet50}" --port "$PORT" --log-level warning $3 \
    > "$W/serve_$tag.log" 2>&1 &
  spid=$!
  for i in $(seq 1 240); do  # readiness turns 200 once every front end listens and the model is warm
    curl -sf "localhost:$PORT/v2/health/ready" >/dev/null && break
    kill -0 $spid 2>/dev/null || { echo "server $tag exited: $(tail -3 "$W/serve_$tag.log")" >> "$W/steps.txt"; return; }
    sleep 0.5
  done
  local L=(python3 -m gpufleet load "http://127.0.0.1:$PORT/predict" --payload jpeg224 --duration "${DUR:-8}"
           --warmup "${WARM:-2}" --json)
  # c=256 first, with the engine's /stats on either side: its stage windows then hold that run alone, and the
  # serving loop's idle seconds between the two say how much of the run the device waited for work.
  local a b; a=$(head -1 /proc/stat)
  curl -s "localhost:$PORT/stats" > "$W/stats_${tag}_before.json"
  pkg "$label" timeout 120 "${L[@]}" -c 256 --processes "${LOADP:-12}" > "$W/serve_${tag}_c256.json" \
    2> "$W/serve_${tag}_c256.err"
  curl -s "localhost:$PORT/stats" > "$W/stats_${tag}_c256.json"
  b=$(head -1 /proc/stat)  # the whole machine's CPU over the c=256 run (load generator included)
  echo "serve $tag c=256: $(python3 benchmarks/cpu_busy.py "$a" "$b")" >> "$W/steps.txt"
  pkg "$label" timeout 120 "${L[@]}" -c 8 > "$W/serve_${tag}_c8.json" 2> "$W/serve_${tag}_c8.err"
  for n in 50 500; do  # the seed's load test: n requests at once
    pkg "$label" timeout 60 python3 -m gpufleet load "http://127.0.0.1:$PORT/predict" --payload jpeg224 --burst $n \
      --json > "$W/burst_${tag}_$n.json" 2> "$W/burst_${tag}_$n.err"
  done
  curl -s "localhost:$PORT/stats" > "$W/stats_$tag.json"
  kill -TERM $spid 2>/dev/null  # drains, then exits 0; killed outright if it has not within 60 s
  for i in $(seq 1 120); do kill -0 $spid 2>/dev/null || break; sleep 0.5; done
  kill -0 $spid 2>/dev/null && { echo "server $tag did not stop: killed" >> "$W/steps.txt"; kill -KILL $spid; }
  wait $spid; echo "server $tag exit code $?" >> "$W/steps.txt"
}

# The video steps' file (made by video_ceiling.py when missing), its 4 and 8 copies, and the command they run.
V=/tmp/video; F=$V/video1080.mp4
four=("$F" "$F" "$F" "$F"); eight=("${four[@]}" "${four[@]}")
Vm=(python3 -m gpufleet video --model "${VIDEO_MODEL:-resnet18}" --gpus 0 --no-progress --json)

for step in ${STEPS:-pool serve video jpeg}; do
  case $step in
    pool)
      for label in $LABELS; do
        stamp "pool overhead [$label]"
        # shellcheck disable=SC2086
        pkg "$label" timeout 300 python3 -m gpufleet bench ${BENCH_ARGS:---model resnet50 --precision fp16 \
          --cuda-graphs --batch-sizes 64,128 --scale} --seconds "${SECS:-3}" --json \
          > "$W/pool_$label.json" 2> "$W/pool_$label.err"
        summary
      done ;;
    serve)
      for cfg in ${SERVE_CONFIGS:-default tuned}; do
        envs=""; base=${cfg%.*}  # default.2: the defaults again, under their own name (A/B/A/B in one call)
        mps=0; model=resnet50; case $base in mps+*) mps=1; base=${base#mps+} ;; esac
        case $base in
          default) args="" ;;
          tuned) args=${TUNED_ARGS:---http-workers 8 --max-batch-size 128 --max-wait-ms 2} ;;
          frontdec) args=${FRONTDEC_ARGS:-}; envs="GPUFLEET_JPEG_DECODE=frontend" ;;
          process) args="--backend process" ;;
          w2) args="--workers-per-device 2" ;;
          proc2) args="--backend process --workers-per-device 2" ;;
          # exact names before the patterns: side is not si<ms>
          eager) args=""; model=benchmarks/classifier_variants.py:EagerResNet50 ;;
          side) args=""; model=benchmarks/classifier_variants.py:SideStreamResNet50 ;;
          pad) args=""; model=benchmarks/classifier_variants.py:PaddedDecodeResNet50 ;;
          si*) args=""; envs="GPUFLEET_SWITCH_INTERVAL_MS=${base#si}" ;;
          dasi*) args=""; envs="GPUFLEET_DECODE_AHEAD=1 GPUFLEET_SWITCH_INTERVAL_MS=${base#dasi}" ;;
          da) args=""; envs="GPUFLEET_DECODE_AHEAD=1" ;;
          dae) args=""; envs="GPUFLEET_DECODE_AHEAD=eager" ;;
          hw*) args="--http-workers ${base#hw}" ;;
          cmc*) args=""; envs="CUDA_DEVICE_MAX_CONNECTIONS=${base#cmc}" ;;
          *) echo "unknown serve config $cfg" >> "$W/steps.txt"; continue ;;
        esac
        for label in $SERVE_LABELS; do
          stamp "JPEG serving [$label $cfg: ${envs:-}${envs:+ }gpufleet serve $model $args]"
          [ $mps = 1 ] && pkg new python3 -m gpufleet mps start >> "$W/steps.txt" 2>&1
          serve_one "$label" "$cfg" "$args" "${envs:-}"
          [ $mps = 1 ] && pkg new python3 -m gpufleet mps stop >> "$W/steps.txt" 2>&1
          summary
        done
      done ;;
    video)
      mkdir -p "$V"
      # Runs of 2 s vary by ~10% from one to the next: each figure is taken ROUNDS times, the ceiling and the
      # pipeline in turn, and the summary compares medians.
      for r in $(seq 1 "${ROUNDS:-3}"); do
        stamp "video 1080p round $r: decode-only ceilings, gpufleet video 8 inputs and 1 input"
        pkg new timeout 200 python3 benchmarks/video_ceiling.py --file "$F" --inputs 8 --segments 1 \
          > "$W/video_ceiling_8_r$r.json" 2> "$W/video_ceiling_8_r$r.err"
        pkg new timeout 120 "${Vm[@]}" "${eight[@]}" --jsonl "$V/eight.{stream}.jsonl" > "$W/video_8_r$r.json" \
          2> "$W/video_8_r$r.err"
        pkg new timeout 60 python3 benchmarks/video_ceiling.py --file "$F" --inputs 1 --segments 4 \
          > "$W/video_ceiling_1_r$r.json" 2> "$W/video_ceiling_1_r$r.err"
        pkg new timeout 120 "${Vm[@]}" "$F" --jsonl "$V/one.jsonl" > "$W/video_1_r$r.json" 2> "$W/video_1_r$r.err"
        for n in ${VIDEO_STEALS:-}; do  # the decoders balanced with another --steal-frames (0: not at all)
          [ "$n" = 0 ] || pkg new timeout 200 python3 benchmarks/video_ceiling.py --file "$F" --inputs 8 --segments 1 \
            --steal "$n" > "$W/video_ceiling_8_steal${n}_r$r.json" 2> "$W/video_ceiling_8_steal${n}_r$r.err"
          pkg new timeout 120 "${Vm[@]}" "${eight[@]}" --steal-frames "$n" --jsonl "$V/eight.{stream}.jsonl" \
            > "$W/video_8_steal${n}_r$r.json" 2> "$W/video_8_steal${n}_r$r.err"
          pkg new timeout 120 "${Vm[@]}" "$F" --steal-frames "$n" --jsonl "$V/one.jsonl" \
            > "$W/video_1_steal${n}_r$r.json" 2> "$W/video_1_steal${n}_r$r.err"
        done
        if [[ " ${VIDEO_VARIANTS:-} " == *" streams "* ]]; then  # every NVDEC decoder on a CUDA stream of its own
          GPUFLEET_NVDEC_STREAMS=own pkg new timeout 200 python3 benchmarks/video_ceiling.py --file "$F" --inputs 8 \
            --segments 1 > "$W/video_ceiling_8_streams_r$r.json" 2> "$W/video_ceiling_8_streams_r$r.err"
          GPUFLEET_NVDEC_STREAMS=own pkg new timeout 120 "${Vm[@]}" "${eight[@]}" --jsonl "$V/eight.{stream}.jsonl" \
            > "$W/video_8_streams_r$r.json" 2> "$W/video_8_streams_r$r.err"
        fi
      done
      stamp "video 1080p: gpufleet video, 8 inputs, --batch-size 128"
      pkg new timeout 120 "${Vm[@]}" "${eight[@]}" --batch-size 128 --jsonl "$V/eight.{stream}.jsonl" \
        > "$W/video_8_bs128.json" 2> "$W/video_8_bs128.err"
      rm -f "$V"/*.jsonl
      summary ;;
    unequal)
      # Inputs of unequal length: the 600-frame file and three of 120 frames (made here), one decoder each; with
      # --steal-frames 0 the long one is left to its own decoder once the short ones are done.
      mkdir -p "$V"
      pkg new timeout 200 python3 benchmarks/video_ceiling.py --file "$F" --make-only > /dev/null 2>&1
      pkg new timeout 200 python3 benchmarks/video_ceiling.py --file "$V/short.mp4" --frames 120 --make-only \
        > /dev/null 2>&1
      for r in $(seq 1 "${ROUNDS:-3}"); do
        stamp "video 1080p round $r: one input of 600 frames and three of 120, with and without --steal-frames"
        for n in 0 30; do
          pkg new timeout 120 "${Vm[@]}" "$F" "$V/short.mp4" "$V/short.mp4" "$V/short.mp4" --steal-frames "$n" \
            --jsonl "$V/uneq.{stream}.jsonl" > "$W/video_4_uneq_steal${n}_r$r.json" 2> "$W/video_4_uneq_steal${n}_r$r.err"
        done
      done
      rm -f "$V"/*.jsonl
      summary ;;
    video2p)
      # Does one process hold 8 inputs back? The same 8 inputs decoded (and run through gpufleet video) as one
      # process and as two processes of 4 started together; the summary adds the two processes' rates.
      mkdir -p "$V"
      pkg new timeout 200 python3 benchmarks/video_ceiling.py --file "$F" --make-only > /dev/null 2>&1
      for r in $(seq 1 "${ROUNDS:-3}"); do
        stamp "video 1080p round $r: 8 inputs in one process and in two processes of 4 (decode-only, gpufleet video)"
        pkg new timeout 200 python3 benchmarks/video_ceiling.py --file "$F" --inputs 8 \
          > "$W/video2p_ceiling_8_one_r$r.json" 2> "$W/video2p_ceiling_8_one_r$r.err"
        for part in a b; do
          pkg new timeout 200 python3 benchmarks/video_ceiling.py --file "$F" --inputs 4 \
            > "$W/video2p_ceiling_8_$part""_r$r.json" 2> "$W/video2p_ceiling_8_$part""_r$r.err" &
        done
        wait
        pkg new timeout 120 "${Vm[@]}" "${eight[@]}" --jsonl "$V/e.{stream}.jsonl" \
          > "$W/video2p_8_one_r$r.json" 2> "$W/video2p_8_one_r$r.err"
        for part in a b; do
          pkg new timeout 120 "${Vm[@]}" "${four[@]}" --jsonl "$V/$part.{stream}.jsonl" \
            > "$W/video2p_8_$part""_r$r.json" 2> "$W/video2p_8_$part""_r$r.err" &
        done
        wait
      done
      rm -f "$V"/*.jsonl
      summary ;;
    ray)
      for b in process ray; do
        stamp "pool overhead [backend $b]"
        # shellcheck disable=SC2086
        pkg new timeout 300 python3 -m gpufleet bench ${BENCH_ARGS:---model resnet50 --precision fp16 \
          --cuda-graphs --batch-sizes 64,128} --backend $b --seconds "${SECS:-3}" --json \
          > "$W/pool_$b.json" 2> "$W/pool_$b.err"
      done
      stamp "backend overhead (a model that does nothing)"
      pkg new timeout 240 python3 benchmarks/backend_overhead.py --seconds 3 > "$W/backend_overhead.txt" \
        2> "$W/backend_overhead.err"
      # the same with a stand-in GPU of 4.4 ms per batch: how busy each backend keeps a device (1.0: never waits)
      pkg new timeout 120 python3 benchmarks/backend_overhead.py --backends process,ray --sleep-ms 4.4 --seconds 3 \
        >> "$W/backend_overhead.txt" 2>> "$W/backend_overhead.err"
      # what moving a batch costs: 128 float16 224x224x3 images (W2 at batch 128), then 128 JPEG-sized bytes items
      pkg new timeout 120 python3 benchmarks/backend_overhead.py --backends process,ray --sleep-ms 0.01 --batch 128 \
        --item-kb 294 --seconds 3 >> "$W/backend_overhead.txt" 2>> "$W/backend_overhead.err"
      pkg new timeout 120 python3 benchmarks/backend_overhead.py --backends process,ray --sleep-ms 0.01 --batch 128 \
        --item-kb 12 --bytes --seconds 3 >> "$W/backend_overhead.txt" 2>> "$W/backend_overhead.err"
      cat "$W/backend_overhead.txt" >> "$W/steps.txt"
      for b in ${RAY_SERVE:-ray process}; do
        stamp "JPEG serving [backend $b, tuned]"
        serve_one new "$b" "--backend $b ${TUNED_ARGS:---http-workers 8 --max-batch-size 128 --max-wait-ms 2}"
      done
      summary ;;
    contention)
      stamp "video contention (benchmarks/video_contention.py: decoders beside the pipeline's GPU work)"
      mkdir -p "$V"
      pkg new timeout "${CONTENTION_TIMEOUT:-400}" python3 benchmarks/video_contention.py --file "$F" --inputs 8 \
        --rounds "${ROUNDS:-2}" --only "${CONTENTION_ONLY:-}" > "$W/video_contention.jsonl" 2> "$W/video_contention.err"
      grep "^video contention" "$W/video_contention.jsonl" >> "$W/steps.txt"
      summary ;;
    convoy)
      stamp "GIL convoy (benchmarks/gil_convoy.py)"
      pkg new timeout 120 python3 benchmarks/gil_convoy.py > "$W/gil_convoy.jsonl" 2> "$W/gil_convoy.err"
      cat "$W/gil_convoy.jsonl" >> "$W/steps.txt"
      summary ;;
    stack)
      stamp "stacking a batch (benchmarks/stack_batch.py)"
      pkg new timeout 120 python3 benchmarks/stack_batch.py > "$W/stack_batch.jsonl" 2> "$W/stack_batch.err"
      cat "$W/stack_batch.jsonl" >> "$W/steps.txt"
      summary ;;
    jpeg)
      stamp "JPEG ceilings (decode 1/2 threads; engine decoding in launch / a batch ahead / as they come / decoded)"
      pkg new timeout 240 python3 benchmarks/jpeg_ceiling.py --seconds "${SECS:-3}" > "$W/jpeg_ceiling.jsonl" \
        2> "$W/jpeg_ceiling.err"
      cat "$W/jpeg_ceiling.jsonl" >> "$W/steps.txt"
      summary ;;
    overlap)
      stamp "GPU JPEG decode beside the model's replay (benchmarks/decode_overlap.py, 8 then 32 CUDA work queues)"
      for cmc in 8 32; do  # CUDA's own default, then gpufleet's
        pkg new timeout 150 env CUDA_DEVICE_MAX_CONNECTIONS=$cmc python3 benchmarks/decode_overlap.py \
          --seconds "${SECS:-2}" > "$W/overlap_cmc$cmc.jsonl" 2> "$W/overlap_cmc$cmc.err"
        { echo "with CUDA_DEVICE_MAX_CONNECTIONS=$cmc:"; cat "$W/overlap_cmc$cmc.jsonl"; } >> "$W/steps.txt"
      done
      summary ;;
    tune)
      stamp "gpufleet tune resnet50 --slo-p99-ms ${TUNE_SLO:-50} (budget ${TUNE_BUDGET:-240} s)"
      pkg new timeout $(( ${TUNE_BUDGET:-240} + 150 )) python3 -m gpufleet tune resnet50 --gpus 0 \
        --slo-p99-ms "${TUNE_SLO:-50}" --budget-s "${TUNE_BUDGET:-240}" --concurrency "${TUNE_C:-8,64,256}" \
        --out "$W/tuned.toml" --json > "$W/tune.json" 2> "$W/tune.err"
      cp "$W/tuned.toml" "$OUT/tuned.toml" 2>/dev/null
      for cfg in default tunefile; do
        args=""; [ $cfg = tunefile ] && args="--config $W/tuned.toml"
        stamp "JPEG serving [new $cfg: gpufleet serve resnet50 $args]"
        serve_one new "$cfg" "$args"
      done
      summary ;;
    tests)
      stamp "pytest -m gpu"
      # Only the files with GPU tests: others import test-only packages (tritonclient) absent there.
      # shellcheck disable=SC2046
      pkg new timeout 200 python3 -m pytest -q -rs -p no:cacheprovider -m gpu $(grep -rl "mark.gpu" tests) \
        > "$W/gpu_tests.txt" 2>&1
      tail -3 "$W/gpu_tests.txt" >> "$W/steps.txt"
      summary ;;
    *) echo "unknown step $step" >> "$W/steps.txt" ;;
  esac
done
stamp done
summary
cat "$OUT/summary.txt"
