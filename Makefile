# arimg — `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
ARIMG := $(VENV)/bin/arimg
DEMO ?= data/demo
SYNTH ?= data/synth

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

demo: install  ## synthetic set -> contact sheet -> the judge's verdict on it
	mkdir -p $(DEMO)
	$(ARIMG) data synth --n 2000 --shard-size 500 --out $(SYNTH) --overwrite
	$(ARIMG) data inspect $(SYNTH) --sheet $(DEMO)/contact-sheet.png > $(DEMO)/inspect.json
	$(ARIMG) eval images $(SYNTH) > $(DEMO)/judge.json
	@cat $(DEMO)/judge.json
	@echo "contact sheet: $(DEMO)/contact-sheet.png" >&2

bench: install  ## every scripts/bench_*.py
	@for f in scripts/bench_*.py; do echo "== $$f" >&2; $(PY) $$f || exit 1; done

clean:  ## remove the virtualenv and demo outputs
	rm -rf $(VENV) $(DEMO) $(SYNTH)
