# arimg — `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
ARIMG := $(VENV)/bin/arimg
DEMO ?= data/demo
SYNTH ?= data/synth
RUNS ?= runs
DEMO_N ?= 40000
# trainer.precision of the demo's training stages; PRECISION=fp32 times the demo as on a CPU without native bf16
PRECISION ?= auto

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

demo: install  ## synthetic set -> judge -> generation tokenizer -> token shards -> pretrain -> SFT -> eval generator
	mkdir -p $(DEMO)
	$(ARIMG) data synth --n $(DEMO_N) --out $(SYNTH) --overwrite
	$(ARIMG) data synth --n 1000 --seed 1 --out $(SYNTH)-val --overwrite
	$(ARIMG) data inspect $(SYNTH) --sheet $(DEMO)/contact-sheet.png > $(DEMO)/inspect.json
	$(ARIMG) eval images $(SYNTH)-val > $(DEMO)/judge.json
	$(ARIMG) train-tokenizer tokenizer=gen trainer=tokenizer_gen run_dir=$(RUNS)/tok-gen data.shards=$(SYNTH) overwrite=true \
		trainer.precision=$(PRECISION)
	$(ARIMG) eval tokenizer $(SYNTH)-val --tokenizer $(RUNS)/tok-gen > $(DEMO)/tokenizer.json
	$(ARIMG) pretokenize $(SYNTH) --tokenizer $(RUNS)/tok-gen --out $(SYNTH)-tok --overwrite > /dev/null
	$(ARIMG) pretrain run_dir=$(RUNS)/pretrain data.shards=$(SYNTH)-tok overwrite=true trainer.precision=$(PRECISION)
	$(ARIMG) sft init_from=$(RUNS)/pretrain run_dir=$(RUNS)/sft data.shards=$(SYNTH)-tok overwrite=true \
		trainer.precision=$(PRECISION)
	$(ARIMG) eval generator --ckpt $(RUNS)/sft 'seeds=[0,1,2]' out=$(DEMO)/generator > $(DEMO)/generator.json
	$(ARIMG) sample --ckpt $(RUNS)/sft -p "a red circle" -p "two blue squares on a white background" \
		-p "a green triangle left of a yellow circle" -p 'the word "CAT" in orange' --n 8 --grid \
		--out $(DEMO)/samples > $(DEMO)/samples.jsonl
	@cat $(DEMO)/judge.json $(DEMO)/tokenizer.json $(DEMO)/generator.json
	@echo "contact sheet: $(DEMO)/contact-sheet.png; reconstructions: $(RUNS)/tok-gen/images/;" \
		"judged samples per kind: $(DEMO)/generator/sheet-*.png; samples: $(DEMO)/samples/" >&2

bench: install  ## every scripts/bench_*.py (installs the bench-only extra: transformers)
	$(PY) -m pip install -q -e '.[bench]'
	@for f in scripts/bench_*.py; do echo "== $$f" >&2; $(PY) $$f || exit 1; done

clean:  ## remove the virtualenv and demo outputs
	rm -rf $(VENV) $(DEMO) $(SYNTH) $(SYNTH)-val $(SYNTH)-tok $(RUNS)/tok-gen $(RUNS)/pretrain $(RUNS)/sft
