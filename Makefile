# Two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: run test tools samples lint typecheck static pytest load protos train export-default bench perf peers clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Runtime only: the server does not need torch.
$(VENV)/.runtime: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e .
	touch $@

# Everything: export/training tooling (torch CPU build), test tools and Ray Serve (tests/ray).
$(VENV)/.dev: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e '.[export,dev,ray]'
	touch $@ $(VENV)/.runtime

# The export, training and Triton-client tools on top of the runtime: torch's CPU build (a 192 MB wheel,
# ~750 MB installed) from PyTorch's CPU index, so pip never pulls the CUDA build and its NVIDIA wheels.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
tools: $(VENV)/.tools
$(VENV)/.tools: pyproject.toml | $(VENV)/.runtime
	$(BIN)/pip install --quiet --index-url $(TORCH_INDEX) torch==2.13.0
	$(BIN)/pip install --quiet -e '.[export,client]'
	touch $@

# The sample pictures under samples/ and their expected maps (committed; this re-creates them).
samples: $(VENV)/.runtime
	$(PY) -m samples.generate

# danet-serve's block cache (preloaded by the server, see server/allocator.py): built with the system's C
# compiler; without one the server runs on plain glibc malloc.
BLOCK_CACHE := server/native/libdanet_blockcache.so
$(BLOCK_CACHE): server/native/danet_blockcache.c server/native/build.sh
	@if command -v $(CC) >/dev/null 2>&1; then CC=$(CC) sh server/native/build.sh $@; \
	else echo "no C compiler ($(CC)): danet-serve runs without its block cache"; fi

run: $(VENV)/.runtime $(BLOCK_CACHE)
	$(BIN)/danet-serve $(ARGS)

test: $(VENV)/.dev $(BLOCK_CACHE)
	$(MAKE) --no-print-directory lint typecheck static pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy common models export server client bench

static: $(VENV)/.dev
	$(PY) -m tests.static_checks

pytest: $(VENV)/.dev
	$(BIN)/pytest -q
	$(BIN)/pytest -q -m load
	$(BIN)/pytest -q -m matrix

protos: $(VENV)/.dev
	$(PY) -m protos.generate

train: $(VENV)/.dev
	$(BIN)/danet-train --output models/weights

export-default: $(VENV)/.dev
	$(BIN)/danet-export models/weights/danet-synthetic.safetensors --logits --output models/weights/danet-synthetic.onnx

bench: $(VENV)/.dev
	$(BIN)/danet-bench $(ARGS)

# Triton's perf_analyzer (in the dev extra's tritonclient) against a running danet-serve (`make run`), over
# gRPC. It needs libb64.so.0d (Debian's libb64-0d, taken from the .deb without root) and libcudart.so.12 (the
# nvidia-cuda-runtime-cu12 wheel), both kept in .venv/perf-libs. Shared memory:
#   make perf PERF_ARGS='--concurrency-range 1:4 --shared-memory system --output-shared-memory-size 8388608'
PERF_GRPC ?= localhost:8001
PERF_MODEL ?= danet-synthetic
PERF_SHAPE ?= 512,512,3
PERF_ARGS ?= --concurrency-range 1:4
PERF_LIBS := $(VENV)/perf-libs
perf: $(PERF_LIBS)/.installed
	LD_LIBRARY_PATH=$(PERF_LIBS)/lib:$(PERF_LIBS)/nvidia/cuda_runtime/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH} \
		$(BIN)/perf_analyzer -m $(PERF_MODEL) -i grpc -u $(PERF_GRPC) --shape image:$(PERF_SHAPE) $(PERF_ARGS)

$(PERF_LIBS)/.installed: | $(VENV)/.dev
	mkdir -p $(PERF_LIBS)/lib
	if ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then \
		cd $(PERF_LIBS) && { apt-get download libb64-0d || { echo "libb64-0d not found: run apt-get update first"; exit 1; }; } \
		&& dpkg-deb -x libb64-0d_*.deb deb && cp deb/usr/lib/*/libb64.so.0d lib/ && rm -rf deb libb64-0d_*.deb; \
	fi
	$(BIN)/pip install --quiet --no-deps --target $(PERF_LIBS) nvidia-cuda-runtime-cu12
	touch $@

# danet-bench --peers: KServe and LitServe in their own environment (KServe pins protobuf < 7, which
# danet-serve's stubs cannot share). Not part of `make test`; the peer tests skip without it.
peers: .venv-peers/.installed
.venv-peers/.installed: bench/peers/requirements.txt
	$(PYTHON) -m venv .venv-peers
	.venv-peers/bin/pip install --quiet -r bench/peers/requirements.txt
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
