# `make demo` and `make test` install into .venv on first use (torch, timm, lightning, hydra, ...).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
export WANDB_MODE ?= offline
# A bad input prints one `error: ...` line; run with HYDRA_FULL_ERROR=1 for the full traceback.

.PHONY: install demo demo-tecno stream-demo benchmark-demo ablation-demo test test-fast lint format demo-data prepare bench-data bench bench-gpu gpu-check clean clean-logs

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=24"
	$(PY) -m pip install -e ".[dev,notebooks]"
	$(PY) -c "import torch, torchvision, timm, lightning, hydra, av; print('torch', torch.__version__, '| lightning', lightning.__version__, '| timm', timm.__version__)"
	touch $(STAMP)

# Every `make demo` writes a fresh run folder DEMO_DIR/<time>/{pretrain,finetune,eval}; each step reads the
# checkpoint that the previous step wrote into it (by path), and DEMO_DIR/latest points at the last run.
DEMO_DIR ?= $(or $(SURGVISTA_LOG_DIR),$(CURDIR)/logs)/demo_pipeline
DEMO_RUN := $(shell date +%Y-%m-%d_%H-%M-%S)
DEMO_OUT = $(DEMO_DIR)/$(DEMO_RUN)
DEMO_ARGS ?=#         extra overrides of every step (e.g. paths.data_dir=...)
DEMO_PRETRAIN_ARGS ?=# extra overrides of the pre-training step
DEMO_PHASE_ARGS ?=#    extra overrides of the fine-tuning and evaluation steps
DEMO_PROBE_ARGS ?=#    options of the pre-training probe (python -m surgvista.pretrain_probe --help)

demo: install  ## pre-train a tiny student on the demo dataset, fine-tune it on the phase labels, evaluate (CPU)
	@test ! -e '$(DEMO_OUT)' || { echo "$(DEMO_OUT) exists: wait a second and run make demo again"; exit 1; }
	$(PY) train.py experiment=demo hydra.run.dir='$(DEMO_OUT)/pretrain' $(DEMO_ARGS) $(DEMO_PRETRAIN_ARGS)
	$(PY) train.py experiment=demo_phase test=false hydra.run.dir='$(DEMO_OUT)/finetune' \
		model.ckpt='$(DEMO_OUT)/pretrain/checkpoints/last.ckpt' $(DEMO_ARGS) $(DEMO_PHASE_ARGS)
	$(PY) eval.py experiment=demo_phase hydra.run.dir='$(DEMO_OUT)/eval' \
		ckpt_path='$(DEMO_OUT)/finetune/checkpoints/last.ckpt' $(DEMO_ARGS) $(DEMO_PHASE_ARGS)
	$(PY) -m surgvista.pretrain_probe '$(DEMO_OUT)/pretrain' $(DEMO_PROBE_ARGS)
	ln -sfn '$(DEMO_RUN)' '$(DEMO_DIR)/latest'
	@echo "demo run: $(DEMO_OUT) (also $(DEMO_DIR)/latest)"

# `make stream-demo` fine-tunes the demo phase model into STREAM_DEMO_DIR/finetune and evaluates it into
# STREAM_DEMO_DIR/eval once (both skipped when present), then streams the first test video with it.
STREAM_DEMO_DIR ?= $(or $(SURGVISTA_LOG_DIR),$(CURDIR)/logs)/stream_demo
STREAM_DEMO_CKPT = $(STREAM_DEMO_DIR)/finetune/checkpoints/last.ckpt
STREAM_DEMO_MANIFEST ?= $(or $(SURGVISTA_DATA_DIR),$(CURDIR)/data)/demo/val.jsonl
STREAM_DEMO_ARGS ?=#   extra options of surgvista-stream (e.g. --realtime --paced)

stream-demo: install  ## stream a demo test video with the demo's fine-tuned model: latency table, overlay, stream/offline CSVs (CPU)
	test -f '$(STREAM_DEMO_CKPT)' || $(PY) train.py experiment=demo_phase test=false \
		hydra.run.dir='$(STREAM_DEMO_DIR)/finetune' $(DEMO_ARGS)
	test -d '$(STREAM_DEMO_DIR)/eval/test/predictions' || $(PY) eval.py experiment=demo_phase \
		hydra.run.dir='$(STREAM_DEMO_DIR)/eval' ckpt_path='$(STREAM_DEMO_CKPT)' $(DEMO_ARGS)
	$(PY) -m surgvista.stream '$(STREAM_DEMO_CKPT)' --manifest '$(STREAM_DEMO_MANIFEST)' \
		--out '$(STREAM_DEMO_DIR)/stream' --compare-reuse --onnx --overlay '$(STREAM_DEMO_DIR)/stream/overlay.mp4' \
		--offline '$(STREAM_DEMO_DIR)/eval/test/predictions' $(STREAM_DEMO_ARGS)

demo-tecno: install  ## TeCNO (cached features + causal MS-TCN) on the embedded demo dataset (CPU, about a minute)
	$(PY) train.py experiment=demo_tecno

BENCH_DEMO_BACKBONES ?= demo_student,demo_videomae,demo_timm_vit
BENCH_DEMO_STAMP := $(shell date +%Y-%m-%d_%H-%M-%S)
benchmark-demo: install  ## frozen probes (linear, attentive, k-NN) x 3 backbone families on the demo data and its leaderboard, after a label-efficiency sweep (CPU)
	$(PY) train.py -m experiment=probe_demo_label_efficiency print_config=false \
		hydra.sweep.dir='$${paths.log_dir}/benchmark_demo/$(BENCH_DEMO_STAMP)_label_efficiency'
	$(PY) train.py -m experiment=probe_demo model/backbone=$(BENCH_DEMO_BACKBONES) probe=linear,attentive,knn \
		print_config=false hydra.sweep.dir='$${paths.log_dir}/benchmark_demo/$(BENCH_DEMO_STAMP)'

# The objectives' ablation in miniature (docs/objectives.md#ablation): the proxy data, the stage-0 teacher, 5
# objectives x 3 seeds pre-trained, probed (attentive, k-NN) and fine-tuned on 2 videos, then the table with 95 % CIs.
# A rerun with the same ABLATION_DIR reuses every finished stage; ABLATION_ARGS edits conf/ablation/proxy.yaml.
ABLATION_DIR ?= $(or $(SURGVISTA_LOG_DIR),$(CURDIR)/logs)/ablation_demo
ABLATION_ARGS ?=#
ablation-demo: install  ## objectives x 3 seeds on the proxy: frozen + few-video fine-tuning, table with CIs (CPU)
	$(PY) -m surgvista.ablation --config proxy --out '$(ABLATION_DIR)' $(ABLATION_ARGS)

# Test files are spread over TEST_WORKERS pytest-xdist processes (each test uses one OpenMP thread); 0: one process.
TEST_WORKERS ?= 2
test: install  ## ruff, then the whole suite (slow tests included)
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

lint: install
	$(PY) -m ruff check .

format: install
	$(PY) -m ruff format . && $(PY) -m ruff check --fix .

BENCH_ARGS ?= --threads 1
bench: install  ## CPU: tiny and small presets, sdpa vs the reference eager config, dual masking off vs 0.5 (docs/performance.md)
	$(PY) -m surgvista.bench pretrain --preset tiny --compare eager-fp16 --steps 10 --warmup 3 $(BENCH_ARGS)
	$(PY) -m surgvista.bench pretrain --preset small --compare eager-fp16 --steps 8 --warmup 2 $(BENCH_ARGS)
	$(PY) -m surgvista.bench pretrain --preset small --compare checks-off --steps 8 --warmup 2 $(BENCH_ARGS)
	$(PY) -m surgvista.bench pretrain --preset tiny --compare dual-mask --steps 10 --warmup 3 $(BENCH_ARGS)

bench-gpu: install  ## GPU: ViT-B student + ViT-L teacher, 16x224^2, bf16+sdpa vs eager+fp16, batch 32 and 64
	$(PY) -m surgvista.bench pretrain --preset base --batch 32 --compare eager-fp16 --steps 20 --warmup 5 --json logs/bench/base_b32.json
	$(PY) -m surgvista.bench pretrain --preset base --batch 64 --compare eager-fp16 --steps 20 --warmup 5 --json logs/bench/base_b64.json

# GPU hosts often have torch but no package index: no install step here (bench/gpu_check.sh installs .whl/ offline).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:  ## one GPU check (docs/performance.md): env, pytest -m gpu, step + end-to-end benchmarks; a dry run without CUDA
	@if $(GPU_PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		PY=$(GPU_PY) bash bench/gpu_check.sh; else PY=$(GPU_PY) bash bench/gpu_check.sh --dry-run; fi

demo-data: install
	$(PY) -m surgvista.demo_data --out data/demo

prepare: install  ## make prepare DATASET=cholec80 RAW=/data/raw/cholec80 OUT=data/cholec80 [ARGS="--workers 8"]
	$(PY) -m surgvista.prepare $(DATASET) --raw "$(RAW)" --out "$(OUT)" $(ARGS)

bench-data: install  ## clips/s per CPU core: the reference loader vs our JPEG frame-folder, mp4 (decord/PyAV/torchcodec) and litdata-shard paths (a few minutes)
	$(PY) bench/data_throughput.py

clean-logs:
	rm -rf logs/*

clean: clean-logs
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
