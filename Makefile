# `make demo` and `make test` install into .venv on first use (torch, timm, lightning, hydra, ...).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
export WANDB_MODE ?= offline
export HYDRA_FULL_ERROR ?= 1

.PHONY: install demo demo-tecno test test-fast lint format demo-data prepare bench-data clean clean-logs

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=24"
	$(PY) -m pip install -e ".[dev]"
	$(PY) -c "import torch, torchvision, timm, lightning, hydra, decord, av; print('torch', torch.__version__, '| lightning', lightning.__version__, '| timm', timm.__version__)"
	touch $(STAMP)

DEMO_DIR ?= $${paths.log_dir}/demo_pipeline

demo: install  ## pre-train a tiny student on the demo dataset, fine-tune it on the phase labels, evaluate (CPU)
	$(PY) train.py experiment=demo hydra.run.dir='$(DEMO_DIR)/pretrain'
	$(PY) train.py experiment=demo_phase test=false hydra.run.dir='$(DEMO_DIR)/finetune' \
		model.ckpt='$(DEMO_DIR)/pretrain/checkpoints/last.ckpt'
	$(PY) eval.py experiment=demo_phase hydra.run.dir='$(DEMO_DIR)/eval' \
		ckpt_path='$(DEMO_DIR)/finetune/checkpoints/last.ckpt'

demo-tecno: install  ## TeCNO (cached features + causal MS-TCN) on the embedded demo dataset (CPU, about a minute)
	$(PY) train.py experiment=demo_tecno

test: install  ## ruff, then the whole suite (slow tests included)
	$(PY) -m ruff check .
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

lint: install
	$(PY) -m ruff check .

format: install
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

demo-data: install
	$(PY) -m surgvista.data.demo --out data/demo

prepare: install  ## make prepare DATASET=cholec80 RAW=/data/raw/cholec80 OUT=data/cholec80 [ARGS="--workers 8"]
	$(PY) -m surgvista.data.prepare $(DATASET) --raw "$(RAW)" --out "$(OUT)" $(ARGS)

bench-data: install  ## clips/s per CPU core: the reference loader vs our JPEG frame-folder and mp4 paths (a few minutes)
	$(PY) bench/data_throughput.py

clean-logs:
	rm -rf logs/*

clean: clean-logs
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
