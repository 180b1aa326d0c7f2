#!/usr/bin/env bash
# Source on the GPU machine: installs the carried wheels ($WHEELS, default .whl/) into /tmp/site and puts them
# on PYTHONPATH. /tmp/site stays while the machine is warm, so a second call can add more wheels to it.
set -e
[ -n "${GPUFLEET_WHEELS_DONE:-}" ] || for dir in ${WHEELS:-.whl}; do
  if [ -d "$dir" ] && ls "$dir"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$dir"/*.whl
  fi
done
export GPUFLEET_WHEELS_DONE=1  # scripts that source this again (gpu_w3.sh from another script) skip the install
export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
# Multi-GPU hosts here: NVLink multicast stays off (KINDS.md); gpufleet needs no NCCL at all.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
set +e
