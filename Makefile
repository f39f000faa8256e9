# make install | data | train | test | test-quick | cluster-test | lint | bench | tensorboard | mlflow | clean
# `make train` and `make test` set up what they need on first use: a virtual environment in .venv (or the
# one that is active), torch's CPU build where there is no GPU, and this package; `make test` (and lint,
# bench) add the test tools.
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
PYTHON ?= $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# Without a GPU, install the CPU build of torch first (the default wheel carries several GB of CUDA).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TB_PORT ?= 6006
MLFLOW_PORT ?= 5000
LOGDIR ?= logs
INSTALLED := $(VENV)/.litlab-installed
DEV := $(VENV)/.litlab-dev

.PHONY: install data train test test-quick cluster-test lint format tensorboard mlflow bench clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)

# Again whenever pyproject.toml changes.
$(INSTALLED): pyproject.toml | $(VENV)/bin/python
	@if $(PYTHON) -c "import torch" 2>/dev/null; then echo "torch already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"; \
	else $(PYTHON) -m pip install --retries 1 --extra-index-url $(TORCH_CPU_INDEX) "torch==$(TORCH_VERSION)+cpu"; fi
	$(PYTHON) -m pip install -e .
	@touch $@

# The test tools (pytest, ruff, selenium, psycopg, optuna-dashboard) on top.
$(DEV): $(INSTALLED)
	$(PYTHON) -m pip install -e ".[dev]"
	@touch $@

install:
	@rm -f $(INSTALLED) $(DEV)
	@$(MAKE) --no-print-directory $(INSTALLED)

# The real datasets (wine, bike, text) into data/, each checked against its SHA-256 in data/README.md.
data: $(INSTALLED)
	$(PYTHON) scripts/download.py wine bike text

train: $(INSTALLED)
	$(PYTHON) train.py

test: $(DEV)
	$(PYTHON) -m pytest

# The inner loop: everything but the end-to-end runs marked slow.
test-quick: $(DEV)
	$(PYTHON) -m pytest -m "not slow"

# SLURM (a two-node cluster on this host: apt-get install slurm-wlm munge; as root) and multi-node DDP
# through srun and torchrun; also part of `make test`, which skips the SLURM ones where it cannot start.
cluster-test: $(DEV)
	$(PYTHON) -m pytest -m cluster -v

lint: $(DEV)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format: $(DEV)
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

bench: $(INSTALLED)
	$(PYTHON) scripts/bench.py

# Loopback only. TensorBoard keeps 10 images per tag unless told: keep every frame of fit/line.
# It opens on Custom Scalars: the losses first, train and val on one chart (src/litlab/cockpit.py).
tensorboard: $(INSTALLED)
	@echo "TensorBoard at http://127.0.0.1:$(TB_PORT)/#custom_scalars ($(LOGDIR)/; Ctrl-C stops it)"
	$(PYTHON) -m tensorboard.main --logdir $(LOGDIR) --host 127.0.0.1 --port $(TB_PORT) --samples_per_plugin images=1000

# MLflow's UI on the runs of logger=mlflow (their SQLite store, logs/mlflow.db, and logs/mlartifacts/).
mlflow: $(INSTALLED)
	@$(PYTHON) -c "import mlflow" 2>/dev/null || { echo "MLflow is not installed: $(PYTHON) -m pip install -e '.[mlflow]'"; exit 1; }
	@echo "MLflow at http://127.0.0.1:$(MLFLOW_PORT) ($(LOGDIR)/mlflow.db; Ctrl-C stops it)"
	$(PYTHON) -m mlflow server --backend-store-uri sqlite:///$(abspath $(LOGDIR))/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

clean:
	rm -rf logs outputs multirun .pytest_cache .ruff_cache
