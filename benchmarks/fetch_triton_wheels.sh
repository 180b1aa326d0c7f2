#!/usr/bin/env bash
# Download here (registries reachable) the wheels benchmarks/triton_run.sh installs on the GPU machine (no internet):
#   .carry/pt/  nvidia-pytriton 0.7.0 (bundles tritonserver 2.51 and its Python backend; ~55 MB, so it travels
#               alone in a first device call that leaves it in /tmp/pt/ of the warm machine)
#   .carry/t/   what PyTriton's server side imports and the GPU image lacks (~42 MB): pyzmq, sh, wrapt,
#               typing-inspect, importlib-metadata, tritonclient[grpc,http] (PyTriton imports both clients) and
#               their dependencies, and numpy 1.26.4: PyTriton 0.7.0 asks for numpy<2, and with numpy 2 its
#               Python-backend stub misreads BYTES inputs (seen on CPU: "unpack_from requires a buffer of at least
#               4143380218 bytes", the stub dies, every request 500). Installed by triton_run.sh into /tmp/tsite,
#               which only the Triton server's interpreter sees: its numpy 1.26, protobuf 6 and grpcio never reach
#               gpufleet's own processes.
# Not fetched: torch/torchvision (the image's; they run with numpy 1.26), typer and its dependencies (only
# `python -m pytriton` imports it).
# Usage: bash benchmarks/fetch_triton_wheels.sh             # for the GPU machine: CPython 3.12, x86-64, glibc >= 2.35
#        PYVER=3.11 T=/tmp/t311 PT=/tmp/pt311 bash benchmarks/fetch_triton_wheels.sh   # the same set for a local test
# Then, with the device tool:
#   run(command="mkdir -p /tmp/pt && cp .carry/pt/*.whl /tmp/pt/", carry=[".carry/pt"])
#   run(command="WHEELS=.carry/c bash benchmarks/triton_run.sh", carry=[".carry/c", ".carry/t"])
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}; T=${T:-.carry/t}; PT=${PT:-.carry/pt}
mkdir -p "$T" "$PT"
P=(--no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp
   --platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64
   --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
   --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q "${P[@]}" -d "$PT" nvidia-pytriton==0.7.0
# The closure pip resolved for nvidia-pytriton 0.7.0 (2026-12-05), less numpy and typer's; pinned for repeatability.
python3 -m pip download -q "${P[@]}" -d "$T" \
  pyzmq==27.3.0 sh==2.4.0 wrapt==2.5.2 typing-inspect==0.9.0 mypy-extensions==1.2.0 typing-extensions==4.16.0 \
  importlib-metadata==10.2.0 zipp==4.1.2 lazy-importer==0.1.0 \
  tritonclient==2.73.0 ml-dtypes==0.5.4 python-rapidjson==1.25 urllib3==2.8.0 packaging==26.4 \
  grpcio==1.85.3 protobuf==6.33.6 \
  geventhttpclient==2.6.1 gevent==26.9.0 greenlet==3.3.2 zope.event==6.2 zope.interface==8.7 brotli==1.2.1 \
  certifi==2026.10.19.post1 \
  aiohttp==3.14.5 aiohappyeyeballs==2.7.1 aiosignal==1.4.0 attrs==26.1.0 frozenlist==1.8.0 multidict==7.2.1 \
  propcache==0.5.4 yarl==1.25.1 idna==3.21 \
  numpy==1.26.4
ls -la "$PT" "$T"
du -sh "$PT" "$T"
