# make install | data | train | test | lint | bench | tensorboard | clean
PYTHON ?= python
TORCH_VERSION ?= 2.13.0
# Without a GPU, install the CPU build of torch first (the default wheel carries several GB of CUDA).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TB_PORT ?= 6006

.PHONY: install data train test lint format tensorboard bench clean

install:
	@if $(PYTHON) -c "import torch" 2>/dev/null; then echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"; \
	else $(PYTHON) -m pip install --retries 1 --extra-index-url $(TORCH_CPU_INDEX) "torch==$(TORCH_VERSION)+cpu"; fi
	$(PYTHON) -m pip install -e ".[dev]"

# The real datasets (wine, bike, text) into data/, each checked against its SHA-256 in data/README.md.
data:
	$(PYTHON) scripts/download.py wine bike text

train:
	$(PYTHON) train.py

test:
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

bench:
	$(PYTHON) scripts/bench.py

# Loopback only. TensorBoard keeps 10 images per tag unless told: keep every frame of fit/line.
tensorboard:
	@echo "TensorBoard at http://127.0.0.1:$(TB_PORT) (logs/; Ctrl-C stops it)"
	$(PYTHON) -m tensorboard.main --logdir logs --host 127.0.0.1 --port $(TB_PORT) --samples_per_plugin images=1000

clean:
	rm -rf logs outputs multirun .pytest_cache .ruff_cache
