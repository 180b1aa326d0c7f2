#!/usr/bin/env bash
# Download here the wheels the GPU machine lacks, for benchmarks/gpu_run.sh to install there.
usage() {
  cat <<'USAGE'
Usage: bash benchmarks/fetch_wheels.sh [-h|--help] [jpeg]

Downloads, on this machine, the wheels the GPU machine lacks (it has torch, torchvision, aiohttp, uvloop,
typer, rich, prometheus-client, nvidia-ml-py, but no internet): the server (msgspec, uvicorn, starlette,
httptools, orjson), PyAV and PyNvVideoCodec, for its Python 3.12 x86-64, into .whl/ (git-ignored, ~63 MB).
Carry it with the device tool: run(command="bash benchmarks/gpu_run.sh", carry=[".whl"]).

jpeg: instead, the server's wheels, nvImageCodec (nvidia-nvimgcodec-cu13 and nvidia-nvjpeg, for decode_overlap.py
and jpeg_decoders.py) and py-spy (for serve_profile.sh) into .whl2/ (~32 MB): run(command="WHEELS=.whl2 STEPS='overlap serve'
bash benchmarks/gpu_run.sh; WHEELS=.whl2 bash benchmarks/serve_profile.sh", carry=[".whl2"]). The two sets do
not fit in one call's 64 MiB together.
USAGE
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  ""|jpeg) ;;
  *) usage >&2; exit 2 ;;
esac
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.whl; [ "${1:-}" = jpeg ] && DEST=.whl2
P=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d "$DEST"
   --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
   --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
SERVER=(msgspec==0.23.0 uvicorn==0.54.0 starlette==1.10.0 httptools==0.9.0 orjson==3.13.0)
if [ "${1:-}" = jpeg ]; then
  python3 -m pip download -q "${P[@]}" "${SERVER[@]}" nvidia-nvimgcodec-cu13==0.9.0.20 \
    nvidia-nvjpeg==13.3.2.43 py-spy==0.4.3
  ls -la .whl2 && du -sh .whl2
  exit
fi
python3 -m pip download -q "${P[@]}" "${SERVER[@]}" av==19.0.2 pynvvideocodec==2.2.4
ls -la .whl && du -sh .whl
