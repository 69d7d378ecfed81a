# arimg — `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
ARIMG := $(VENV)/bin/arimg
DEMO ?= data/demo
SYNTH ?= data/synth
RUNS ?= runs

.DEFAULT_GOAL := help
.PHONY: help install test test-slow demo bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

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

demo: install  ## synthetic set -> judge -> tokenizer (VQ-VAE, VQ-GAN) -> its evaluation -> token shards -> pretrain
	mkdir -p $(DEMO)
	$(ARIMG) data synth --n 20000 --out $(SYNTH) --overwrite
	$(ARIMG) data synth --n 1000 --seed 1 --out $(SYNTH)-val --overwrite
	$(ARIMG) data inspect $(SYNTH) --sheet $(DEMO)/contact-sheet.png > $(DEMO)/inspect.json
	$(ARIMG) eval images $(SYNTH)-val > $(DEMO)/judge.json
	$(ARIMG) train-tokenizer tokenizer=vqvae run_dir=$(RUNS)/tok-vqvae data.shards=$(SYNTH) overwrite=true
	$(ARIMG) train-tokenizer tokenizer=vqgan trainer=tokenizer_gan init_from=$(RUNS)/tok-vqvae \
		run_dir=$(RUNS)/tok-vqgan data.shards=$(SYNTH) overwrite=true
	$(ARIMG) eval tokenizer $(SYNTH)-val --tokenizer $(RUNS)/tok-vqgan > $(DEMO)/tokenizer.json
	$(ARIMG) pretokenize $(SYNTH) --tokenizer $(RUNS)/tok-vqgan --out $(SYNTH)-tok --overwrite > /dev/null
	$(ARIMG) pretrain run_dir=$(RUNS)/pretrain data.shards=$(SYNTH)-tok overwrite=true
	$(PY) scripts/judge_pretrain.py $(RUNS)/pretrain --n 8 --sheet $(DEMO)/pretrain-samples.png > $(DEMO)/pretrain.json
	$(ARIMG) sample --ckpt $(RUNS)/pretrain -p "a red circle" -p "a blue square on a white background" -p "" \
		--n 8 --grid --out $(DEMO)/samples > $(DEMO)/samples.jsonl
	@cat $(DEMO)/judge.json $(DEMO)/tokenizer.json $(DEMO)/pretrain.json
	@echo "contact sheet: $(DEMO)/contact-sheet.png; reconstructions: $(RUNS)/tok-vqgan/images/;" \
		"samples: $(DEMO)/pretrain-samples.png, $(DEMO)/samples/, $(RUNS)/pretrain/images/" >&2

bench: install  ## every scripts/bench_*.py (installs the bench-only extra: transformers)
	$(PY) -m pip install -q -e '.[bench]'
	@for f in scripts/bench_*.py; do echo "== $$f" >&2; $(PY) $$f || exit 1; done

clean:  ## remove the virtualenv and demo outputs
	rm -rf $(VENV) $(DEMO) $(SYNTH) $(SYNTH)-val $(SYNTH)-tok $(RUNS)/tok-vqvae $(RUNS)/tok-vqgan $(RUNS)/pretrain
