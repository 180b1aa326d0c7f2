#!/usr/bin/env bash
# The benchmark evidence in ONE device call (device time is short). Carry .whl (made by scripts/fetch_wheels.sh:
# server wheels, PyAV and PyNvVideoCodec, ~63 MB). STEPS picks the steps, in order:
#   2-GPU machine (issue 10, default): w2t w3 w2p w4 bal tests — W2 (thread, process backends), W3 and W4, each
#     on 1 GPU and on 2 GPUs side by side, the balancers with GPU 1 slowed by a background load, the GPU tests;
#   1-GPU machine (issues 5, 8): w2one proc w3one w4one tests — W2 bs 8/64 vs raw, the process-backend matrix
#     with and without MPS plus kill -9 under load, W3 with 8 HTTP front ends, W4 with 8 inputs; kill9 alone.
# W3 uses 16 load-generator processes on 2 GPUs, 12 on one (LOADP): with 8 on 16 cores the client was the limit.
# Every step is time-boxed; results are appended to $OUT/summary.txt as they come and $OUT/all.tgz (raw JSON and
# logs) is refreshed after each step, so a cut-off run still returns them.
# Knobs: SECS (bench seconds), DUR/WARM (W3 seconds per concurrency), LOADP, STEPS (which steps, in order).
# Server-only calls: WHEELS=.whl3 with .whl3/ = the server wheels of .whl (no PyAV/PyNvVideoCodec), to leave room.
# W4 on one GPU (step w4probe, knobs CONFIGS, DECODE_ONLY, SPY_TAG): carry .spy too (.spy/py-spy.xz, 2 MB: xz -9 of
# the py-spy binary), which fits beside .whl.
# Profiling W2 (step w2prof, PROF_CONFIGS="backend:gpus:switch_ms:in_flight:pipeline_depth ...", NO_SPY=1 for
# clean figures): carry .tools instead of .whl, made with `pip install py-spy; mkdir -p .tools/whl;
# cp "$(which py-spy)" .tools/; cp .whl/msgspec-* .whl/orjson-* .tools/whl/`, and set WHEELS=.tools/whl.
export OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=/tmp/work; rm -rf "$W"; mkdir -p "$W"
T0=$(date +%s)
source scripts/device_setup.sh
export COLUMNS=160  # rich tables in files: wide enough for every column
S="$OUT/summary.txt"
say() { echo "$*" | tee -a "$S"; }
pack() { tar czf /tmp/all.tgz -C "$W" . 2>/dev/null && mv /tmp/all.tgz "$OUT/all.tgz"; }
stamp() { say "== $1 (t=$(( $(date +%s) - T0 ))s)"; }
{ nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version --format=csv; nvidia-smi topo -m; nproc;
  python3 -c "import torch, torchvision, av, PyNvVideoCodec, uvicorn; print(torch.__version__, torchvision.__version__, av.__version__, PyNvVideoCodec.__version__, uvicorn.__version__)"; } > "$W/machine.txt" 2>&1
head -4 "$W/machine.txt" | tee -a "$S"; tail -2 "$W/machine.txt" | tee -a "$S"
B="python3 -m gpufleet bench --model resnet50 --precision fp16 --cuda-graphs --seconds ${SECS:-2} --scale --json"
unpack_spy() {  # the carried .spy/py-spy.xz -> /tmp/py-spy; fails when .spy was not carried
  [ -f .spy/py-spy.xz ] && python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.spy/py-spy.xz'), open('/tmp/py-spy', 'wb'))" \
    && chmod +x /tmp/py-spy
}
report() {  # $1 = bench JSON file
  python3 -c "import json,sys; from gpufleet.bench import print_report; print_report(json.load(open(sys.argv[1])))" "$1" 2>&1 \
    | tee -a "$S" || tail -5 "${1%.json}.err" | tee -a "$S"
}
for step in ${STEPS:-w2t w3 w2p w4 bal tests}; do
  case $step in
    w2t) stamp "W2 thread backend, 1 vs 2 GPUs"
         timeout 110 $B --batch-sizes 8,64 > "$W/w2_thread.json" 2> "$W/w2_thread.err"; report "$W/w2_thread.json" ;;
    w2p) stamp "W2 process backend, 1 vs 2 GPUs"
         timeout 120 $B --batch-sizes 64 --backend process --no-raw > "$W/w2_process.json" 2> "$W/w2_process.err"
         report "$W/w2_process.json" ;;
    w3)  stamp "W3 jpeg224 served, 1 vs 2 GPUs (8 HTTP front ends, 8 load processes; 2 GPUs also with process workers)"
         spy=""; [ -n "${W3_SPY:-}" ] && unpack_spy && spy=/tmp/py-spy  # W3_SPY=1: py-spy the GPU children under c=256
         OUT=$W SPY=$spy CONFIGS="${W3_CONFIGS:-g1hw8 g2hw8 g2hw8p}" LOADP=${LOADP:-16} SKIP_P1=1 DUR=${DUR:-8} WARM=${WARM:-2} \
           timeout ${W3_LIMIT:-230} bash scripts/gpu_w3.sh \
           > "$W/w3.txt" 2>&1
         grep -E "^(==|W3|W5|stages|per device|NVML|client CPU|CPU over)|server exit" "$W/w3.txt" | cut -c1-400 | tee -a "$S"
         for f in "$W"/spy_*.txt; do [ -f "$f" ] && python3 scripts/spy_top.py "$f" 45 > "${f%.txt}.top"; done ;;
    w2p2) stamp "W2 process backend, two workers per GPU, 1 vs 2 GPUs"
         timeout 120 $B --batch-sizes 64 --backend process --workers-per-device 2 --no-raw > "$W/w2_process2.json" \
           2> "$W/w2_process2.err"
         report "$W/w2_process2.json" ;;
    w4)  stamp "W4 video1080, 1 vs 2 GPUs"
         OUT=$W INPUTS=${INPUTS:-16} DECODERS=${DECODERS:-8} timeout 170 python3 scripts/gpu_video_scale.py > "$W/w4.txt" 2>&1
         grep -E "^\{|W4" "$W/w4.txt" | cut -c1-700 | tee -a "$S"; rm -f "$W"/frames_*.jsonl "$W/video1080.mp4"
         python3 -c "import json, sys; r = json.load(open(sys.argv[1])); [print(k, json.dumps({x: r[k].get(x) for x in ('per_process', 'contexts', 'on_several_gpus', 'this_pid')})) for k in r if k.startswith('pipeline')]" \
           "$W/video_scale.json" 2>&1 | cut -c1-900 | tee -a "$S" ;;
    bal) stamp "balancers, GPU 1 shared with a background matmul load"
         timeout 150 python3 scripts/gpu_balancers.py "${BAL_SECS:-6}" 256 > "$W/balancers.txt" 2>&1
         grep "^{" "$W/balancers.txt" | cut -c1-400 | tee -a "$S" ;;
    w2one) stamp "W2 one GPU: pool vs raw"
         timeout 100 ${B/--scale/} --batch-sizes 8,64 > "$W/w2_one.json" 2> "$W/w2_one.err"; report "$W/w2_one.json" ;;
    kill9) stamp "kill -9 of a process worker under load"
         OUT=$W SKIP_TESTS=1 MATRIX=" " NO_MPS=1 timeout 90 bash scripts/gpu_process.sh > "$W/process.txt" 2>&1
         grep -E "^(==|\{)" "$W/process.txt" | cut -c1-600 | tee -a "$S" ;;
    w2prof) stamp "W2 under py-spy (.tools/py-spy carried): parent, parent GIL holders, children"
         for cfg in ${PROF_CONFIGS:-process:0 process:0,1 process:0,1:1 thread:0,1}; do
           IFS=: read -r be gp sw inf pipe <<< "$cfg"; tag="${be}_${gp/,/}${sw:+_sw$sw}${inf:+_f$inf}${pipe:+_d$pipe}"
           rm -f /tmp/go; SWITCH_MS=$sw IN_FLIGHT=$inf PIPE=$pipe timeout 90 python3 scripts/gpu_w2_profile.py "$be" "$gp" "${PSECS:-8}" /tmp/go \
             > "$W/prof_$tag.json" 2> "$W/prof_$tag.err" &
           pid=$!
           while [ ! -s /tmp/go ] && kill -0 $pid 2>/dev/null; do sleep 0.2; done
           if [ -x .tools/py-spy ] && [ -s /tmp/go ] && [ -z "${NO_SPY:-}" ]; then
             read -r ppid kids < /tmp/go
             .tools/py-spy record -p "$ppid" -d 5 -r 200 -f raw --nonblocking -o "$W/spy_${tag}_parent.txt" >/dev/null 2>&1 &
             .tools/py-spy record -p "$ppid" -d 5 -r 200 -f raw --nonblocking --gil -o "$W/spy_${tag}_gil.txt" >/dev/null 2>&1 &
             k=0; for c in $kids; do .tools/py-spy record -p "$c" -d 5 -r 200 -f raw --nonblocking \
               -o "$W/spy_${tag}_child$k.txt" >/dev/null 2>&1 & k=$((k+1)); done
           fi
           wait $pid; wait
           say "$tag $(tail -1 "$W/prof_$tag.json")"; tail -3 "$W/prof_$tag.err" | tee -a "$S"
         done ;;
    raw2) stamp "W1 raw graph bs 64 on one GPU, then on every GPU at once (the 2-GPU ceiling for W2)"
         timeout 120 python3 scripts/gpu_raw_pair.py 4 2>&1 | tail -1 | tee -a "$S" ;;
    probe) stamp "host copy bandwidth (W2 stacking)"
         timeout 30 python3 scripts/copy_probe.py 2>&1 | tail -1 | tee -a "$S" ;;
    aiohttp) python3 -c "import aiohttp, aiohttp.http_parser as p, uvloop; print('aiohttp', aiohttp.__version__, p.HttpResponseParser.__module__, 'uvloop', uvloop.__version__)" 2>&1 | tee -a "$S" ;;
    proc) stamp "process backend: workers per GPU, MPS, kill -9 under load"
         OUT=$W SKIP_TESTS=1 SECS=${SECS:-2} MATRIX="${MATRIX:-resnet18 8 thread 1;resnet18 8 process 1 2 4 8}" \
           MATRIX_MPS="${MATRIX_MPS:-resnet18 8 process 2 4 8}" timeout 240 bash scripts/gpu_process.sh \
           > "$W/process.txt" 2>&1
         grep -E "^(==|  resnet|\{)|MPS|mps" "$W/process.txt" | cut -c1-400 | tee -a "$S" ;;
    w3one) stamp "W3 jpeg224 served, one GPU, 8 HTTP front ends, 8 load processes"
         OUT=$W CONFIGS="hw8" LOADP=${LOADP:-12} SKIP_P1=1 DUR=${DUR:-8} WARM=${WARM:-2} timeout ${W3_LIMIT:-100} bash scripts/gpu_w3.sh \
           > "$W/w3.txt" 2>&1
         grep -E "^(==|W3|W5|stages|per device|NVML|client CPU|CPU over)|server exit" "$W/w3.txt" | cut -c1-400 | tee -a "$S" ;;
    w4one) stamp "W4 video1080, one GPU, 8 inputs"
         OUT=$W INPUTS=8 DECODERS=${DECODERS:-8} DEVICE_SETS=0 timeout 100 python3 scripts/gpu_video_scale.py \
           > "$W/w4.txt" 2>&1
         grep -E "^\{|W4" "$W/w4.txt" | cut -c1-700 | tee -a "$S"; rm -f "$W"/frames_*.jsonl "$W/video1080.mp4" ;;
    w4probe) stamp "W4 one GPU, one process: pipeline vs decode-only, decoding ahead or not (py-spy: carry .spy)"
         unpack_spy
         OUT=$W SPY=/tmp/py-spy SPY_TAG="${SPY_TAG:-8_8_0 8_8_1}" timeout ${W4P_LIMIT:-240} python3 scripts/gpu_w4_probe.py \
           > "$W/w4probe.txt" 2>&1
         grep -E "^\{" "$W/w4probe.txt" | cut -c1-600 | tee -a "$S"
         for f in "$W"/spy_w4_*.txt; do [ -f "$f" ] && python3 scripts/spy_top.py "$f" 45 > "${f%.txt}.top"; done
         rm -f "$W"/frames_*.jsonl "$W/video1080.mp4" ;;
    w4pair) stamp "W4: two independent processes, one per GPU, timed parts started together (plain, then CUDA_VISIBLE_DEVICES)"
         export SRC=$W/video1080.mp4
         [ -f "$SRC" ] || OUT=$W python3 -c "import sys; sys.path.insert(0, 'scripts'); import gpu_video_scale as v; print(v.make())" >> "$S"
         for mode in ${PAIR_MODES:-plain iso}; do
           rm -rf /tmp/bar; mkdir -p /tmp/bar
           for g in 0 1; do
             if [ "$mode" = iso ]; then dev="CUDA_VISIBLE_DEVICES=$g DEVICE=0"; else dev="DEVICE=$g"; fi
             mkdir -p "$W/pair_${mode}_$g"
             env $dev OUT="$W/pair_${mode}_$g" BARRIER=/tmp/bar/$g CONFIGS="${PAIR_CONFIG:-8:8:0}" DECODE_ONLY="" \
               timeout 150 python3 scripts/gpu_w4_probe.py > "$W/pair_${mode}_$g.txt" 2>&1 &
           done
           for cfg in ${PAIR_CONFIG:-8:8:0}; do  # each config's timed part starts on both GPUs at once
             tag=${cfg//:/_}
             n=0; while { [ ! -f /tmp/bar/0.$tag.ready ] || [ ! -f /tmp/bar/1.$tag.ready ]; } && [ $n -lt 1200 ]; do sleep 0.1; n=$((n+1)); done
             ( sleep 1; nvidia-smi --query-compute-apps=pid,gpu_bus_id,used_memory --format=csv,noheader ) >> "$W/pair_${mode}_apps.txt" 2>&1 &
             touch /tmp/bar/go.$tag
           done
           wait
           for g in 0 1; do grep '^{"pipeline' "$W/pair_${mode}_$g.txt" | cut -c1-420 | sed "s/^/$mode gpu$g /" | tee -a "$S"; done
           cat "$W/pair_${mode}_apps.txt" | tee -a "$S"
         done
         rm -f "$W"/pair_*/frames_*.jsonl ;;
    tests) stamp "pytest -m gpu"
         # Only the files with GPU tests: others import test-only packages (tritonclient) absent there.
         timeout 75 python3 -m pytest -q -rs -p no:cacheprovider -m gpu $(grep -rl "mark.gpu" tests) \
           > "$W/gpu_tests.txt" 2>&1
         tail -6 "$W/gpu_tests.txt" | tee -a "$S" ;;
  esac
  pack
done
stamp "done"
pack
