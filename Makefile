# Two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: run test tools samples lint typecheck static pytest load protos train export-default bench peers clean

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

run: $(VENV)/.runtime
	$(BIN)/danet-serve $(ARGS)

test: $(VENV)/.dev
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

# danet-bench --peers: KServe and LitServe in their own environment (KServe pins protobuf < 7, which
# danet-serve's stubs cannot share). Not part of `make test`; the peer tests skip without it.
peers: .venv-peers/.installed
.venv-peers/.installed: bench/peers/requirements.txt
	$(PYTHON) -m venv .venv-peers
	.venv-peers/bin/pip install --quiet -r bench/peers/requirements.txt
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
