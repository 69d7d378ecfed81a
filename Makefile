# arimg — `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
ARIMG := $(VENV)/bin/arimg
DEMO ?= data/demo
SYNTH ?= data/synth
RUNS ?= runs
# trainer.precision of the recipes' training stages (fp32: the same figures on any CPU; PRECISION=auto on a GPU)
PRECISION ?= fp32

.DEFAULT_GOAL := help
.PHONY: help install test test-slow demo train-default bench gpu-check clean clean-demo

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: $(VENV)/.installed  ## virtualenv with torch (CPU wheel, pinned) and arimg; tesseract-ocr via apt

$(VENV)/.installed: pyproject.toml
	bash scripts/install_system_deps.sh
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: install  ## the fast test set (under 10 minutes on 2 CPU cores)
	$(PY) -m pytest -q -m "not slow"

test-slow: install  ## the slow tests
	$(PY) -m pytest -q -m slow

gpu-check: install  ## every CUDA path in one table (scripts/gpu_check.sh; about 8 min on a GPU machine)
	bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

# ---------------------------------------------------------------------------------------------------------
# make demo, make train-default: the recipes conf/recipe/demo.yaml and default.yaml, run by `arimg recipe`: the
# stages in order, each stage's wall time in DATA/times.tsv; run again after an interruption, it skips what
# has finished and resumes an interrupted training stage from its last checkpoint.
demo: install  ## every stage on the synthetic set, then the accuracy table per stage (about 30 min)
	$(ARIMG) recipe demo data=$(DEMO) runs=$(RUNS) synth=$(SYNTH) precision=$(PRECISION)

train-default: install  ## the bundled default model's recipe (its stages sized for 150 min on 2 cores; rerun to continue)
	$(ARIMG) recipe default precision=$(PRECISION)

bench: install  ## every scripts/bench_*.py (installs the bench-only extra: transformers)
	$(PY) -m pip install -q -e '.[bench]'
	@for f in scripts/bench_*.py; do echo "== $$f" >&2; $(PY) $$f || exit 1; done

clean-demo:  ## remove the demo's outputs (the next make demo starts from nothing)
	rm -rf $(DEMO) $(SYNTH) $(SYNTH)-val $(SYNTH)-tok $(RUNS)/tok-gen $(RUNS)/pretrain $(RUNS)/pretrain-more \
		$(RUNS)/pretrain-more2 $(RUNS)/sft $(RUNS)/dpo $(RUNS)/dpo2 $(RUNS)/tok-dec $(RUNS)/tok-post $(RUNS)/tok-post2 \
		$(RUNS)/final

clean: clean-demo  ## remove the virtualenv and the demo's outputs
	rm -rf $(VENV)
