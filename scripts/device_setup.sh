#!/usr/bin/env bash
# Source on the GPU machine: installs the carried wheels (.whl/) into /tmp/site and puts them on PYTHONPATH.
set -e
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
set +e
