# arimg — `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
ARIMG := $(VENV)/bin/arimg
DEMO ?= data/demo
SYNTH ?= data/synth
RUNS ?= runs
DEMO_N ?= 40000
# trainer.precision of the demo's training stages: fp32, so that two runs give the same figures on any CPU
# (auto measures at start-up and may pick bf16 where the CPU has it natively; PRECISION=auto on a GPU)
PRECISION ?= fp32

.DEFAULT_GOAL := help
.PHONY: help install test test-slow demo bench gpu-check clean clean-demo

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
# make demo: every stage on the synthetic set, each a target on its output (a stamp written when the stage
# has finished), so that a second `make demo` after an interruption reuses what is done and resumes a
# training stage from its last checkpoint. Each stage's wall time is appended to $(DEMO)/times.tsv.
TIMED = $(PY) scripts/timed.py $(DEMO)/times.tsv
# a training stage resumes its run when it has a checkpoint newer than its input, else starts afresh
resume = $$(test $(1)/checkpoints/latest -nt $< && echo resume=true || echo overwrite=true)
# the demo's evaluations: held-out prompts, 100 images per kind, sampling seed 0 (docs/results.md has the
# 3-seed figures)
DEMO_EVAL ?= per_kind=25 n=4
# the demo's preference stage: 50 training prompts per kind, 8 samples each; a short DPO, not compiled
# (compiling costs more than its 30 steps)
DEMO_PREFS ?= per_kind=50
DEMO_DPO ?= trainer.max_steps=30 dpo.ntp_weight=1 trainer.compile=false
# a second preference round (train-default): pairs from the DPO run's own samples (DEMO_PREFS2), then DPO from
# that run on them (DEMO_DPO2). Empty DEMO_PREFS2 (the demo): no second round; the last model is the DPO run
DEMO_PREFS2 ?=
DEMO_DPO2 ?=
LAST = $(if $(DEMO_PREFS2),dpo2,dpo)
TRAIN_ARGS = trainer.precision=$(PRECISION)
TOK_ARGS ?=
PRETRAIN_ARGS ?=
# further pretrain phases, each started from the one before with its own warm-up and cosine, for a longer
# schedule than one run gives (train-default): pretrain-more from pretrain, pretrain-more2 from pretrain-more.
# Empty: no such phase, and SFT starts from the last one that runs
PRETRAIN_MORE_ARGS ?=
PRETRAIN_MORE2_ARGS ?=
MORE = $(if $(PRETRAIN_MORE_ARGS),pretrain-more $(if $(PRETRAIN_MORE2_ARGS),pretrain-more2))
BASE = $(lastword pretrain $(MORE))
# $(call more_phase,NAME,FROM,OVERRIDES): a pretrain phase that starts from the run FROM
more_phase = $(TIMED) $(1) $(ARIMG) pretrain init_from=$(RUNS)/$(2) run_dir=$(RUNS)/$(1) data.shards=$(SYNTH)-tok \
	$(call resume,$(RUNS)/$(1)) $(TRAIN_ARGS) $(3) > /dev/null
# $(call prefs_round,STAGE,OUT,FROM,OVERRIDES): preference pairs in $(DEMO)/OUT from the run FROM's samples
prefs_round = $(TIMED) $(1) $(ARIMG) make-prefs --ckpt $(RUNS)/$(3) out=$(DEMO)/$(2) $(4) overwrite=true \
	> $(DEMO)/$(2).json
# $(call dpo_round,NAME,FROM,PREFS,OVERRIDES): DPO run NAME from the run FROM on the pairs in $(DEMO)/PREFS
dpo_round = $(TIMED) $(1) $(ARIMG) dpo init_from=$(RUNS)/$(2) run_dir=$(RUNS)/$(1) data.shards=$(DEMO)/$(3) $(4) \
	$(call resume,$(RUNS)/$(1)) $(TRAIN_ARGS) > /dev/null

demo: $(DEMO)/summary.md  ## every stage on the synthetic set, then the accuracy table per stage (about 30 min)
	@cat $(DEMO)/summary.md

$(DEMO)/synth.done: $(VENV)/.installed
	mkdir -p $(DEMO)
	$(TIMED) synth $(ARIMG) data synth --n $(DEMO_N) --out $(SYNTH) --overwrite > /dev/null
	$(TIMED) synth $(ARIMG) data synth --n 1000 --seed 1 --out $(SYNTH)-val --overwrite > /dev/null
	$(TIMED) judge $(ARIMG) data inspect $(SYNTH) --sheet $(DEMO)/contact-sheet.png > $(DEMO)/inspect.json
	$(TIMED) judge $(ARIMG) eval images $(SYNTH)-val limit=500 > $(DEMO)/judge.json
	touch $@

$(RUNS)/tok-gen/done: $(DEMO)/synth.done
	$(TIMED) tokenizer $(ARIMG) train-tokenizer tokenizer=gen trainer=tokenizer_gen run_dir=$(RUNS)/tok-gen \
		data.shards=$(SYNTH) $(call resume,$(RUNS)/tok-gen) $(TRAIN_ARGS) $(TOK_ARGS) > /dev/null
	$(TIMED) tokenizer $(ARIMG) eval tokenizer $(SYNTH)-val --tokenizer $(RUNS)/tok-gen --no-jpeg --limit 500 \
		> $(DEMO)/tokenizer.json
	touch $@

# a larger decoder trained alone on the tokenizer's frozen codes (train-default: DEC_ARGS): the same tokens, drawn
# more exactly. The transformer stages never see it; the last model is exported with it (`arimg export
# --tokenizer`) and that export is evaluated once more (eval-final). Empty DEC_ARGS (the demo): no such stage
DEC_ARGS ?=
$(RUNS)/tok-dec/done: $(RUNS)/tok-gen/done
	$(TIMED) decoder $(ARIMG) train-tokenizer tokenizer=gen_dec trainer=tokenizer_dec init_from=$(RUNS)/tok-gen \
		decoder_only=true run_dir=$(RUNS)/tok-dec data.shards=$(SYNTH) $(call resume,$(RUNS)/tok-dec) $(TRAIN_ARGS) \
		$(TOK_ARGS) $(DEC_ARGS) > /dev/null
	$(TIMED) decoder $(ARIMG) eval tokenizer $(SYNTH)-val --tokenizer $(RUNS)/tok-dec --no-jpeg --limit 500 \
		> $(DEMO)/decoder.json
	touch $@

# RobusTok's post-training of that decoder (train-default: POST_ARGS, with DEC_ARGS): half of each batch's whole
# images are decoded from the codes the last model draws for them teacher-forced (each code drawn after the
# caption and the image's true codes before it), the target the image: the decoder learns to draw what the
# sampler writes. The last model is then exported with this decoder. Empty POST_ARGS: no such stage
POST_ARGS ?=
# $(call post_phase,NAME,FROM,OVERRIDES): a post-training phase into $(RUNS)/NAME from the decoder of run FROM
post_phase = $(TIMED) $(1:tok-%=%) $(ARIMG) train-tokenizer tokenizer=gen_dec trainer=tokenizer_post init_from=$(RUNS)/$(2) \
		decoder_only=true resample_from=$(RUNS)/$(LAST) data.crop_size=null data.batch_size=8 run_dir=$(RUNS)/$(1) \
		data.shards=$(SYNTH) $(call resume,$(RUNS)/$(1)) $(TRAIN_ARGS) $(3) > /dev/null && \
	$(TIMED) $(1:tok-%=%) $(ARIMG) eval tokenizer $(SYNTH)-val --tokenizer $(RUNS)/$(1) --no-jpeg --limit 500 \
		> $(DEMO)/$(1:tok-%=%).json
$(RUNS)/tok-post/done: $(RUNS)/$(LAST)/done $(RUNS)/tok-dec/done
	$(call post_phase,tok-post,tok-dec,$(POST_ARGS))
	touch $@

# a second post-training phase from the first's decoder (train-default: POST2_ARGS, with POST_ARGS): its own
# warm-up and cosine, the same draws' settings unless it sets sampling.*. Empty: no such phase
POST2_ARGS ?=
$(RUNS)/tok-post2/done: $(RUNS)/tok-post/done
	$(call post_phase,tok-post2,tok-post,$(POST2_ARGS))
	touch $@

# the last model exported with the last decoder; FINAL_SAMPLING (KEY=VALUE words, train-default): the sampling
# settings its card recommends, which its evaluation (eval-final) and arimg sample then use
FINAL_TOK = $(if $(POST2_ARGS),tok-post2,$(if $(POST_ARGS),tok-post,tok-dec))
FINAL_SAMPLING ?=
$(DEMO)/eval-final.json: $(RUNS)/$(LAST)/done $(RUNS)/$(FINAL_TOK)/done
	$(TIMED) export $(ARIMG) export --ckpt $(RUNS)/$(LAST) --tokenizer $(RUNS)/$(FINAL_TOK) --out $(RUNS)/final \
		$(addprefix --sampling ,$(FINAL_SAMPLING)) --overwrite > /dev/null
	$(TIMED) eval-final $(ARIMG) eval generator --ckpt $(RUNS)/final $(DEMO_EVAL) out=$(DEMO)/eval-final > $@.tmp
	mv $@.tmp $@

$(SYNTH)-tok/done: $(RUNS)/tok-gen/done
	$(TIMED) pretokenize $(ARIMG) pretokenize $(SYNTH) --tokenizer $(RUNS)/tok-gen --out $(SYNTH)-tok --overwrite > /dev/null
	touch $@

$(RUNS)/pretrain/done: $(SYNTH)-tok/done
	$(TIMED) pretrain $(ARIMG) pretrain run_dir=$(RUNS)/pretrain data.shards=$(SYNTH)-tok \
		$(call resume,$(RUNS)/pretrain) $(TRAIN_ARGS) $(PRETRAIN_ARGS) > /dev/null
	touch $@

$(RUNS)/pretrain-more/done: $(RUNS)/pretrain/done
	$(call more_phase,pretrain-more,pretrain,$(PRETRAIN_MORE_ARGS))
	touch $@

$(RUNS)/pretrain-more2/done: $(RUNS)/pretrain-more/done
	$(call more_phase,pretrain-more2,pretrain-more,$(PRETRAIN_MORE2_ARGS))
	touch $@

$(RUNS)/sft/done: $(RUNS)/$(BASE)/done
	$(TIMED) sft $(ARIMG) sft init_from=$(RUNS)/$(BASE) run_dir=$(RUNS)/sft data.shards=$(SYNTH)-tok \
		$(call resume,$(RUNS)/sft) $(TRAIN_ARGS) > /dev/null
	touch $@

$(DEMO)/prefs/done: $(RUNS)/sft/done
	$(call prefs_round,make-prefs,prefs,sft,$(DEMO_PREFS))
	touch $@

$(RUNS)/dpo/done: $(DEMO)/prefs/done
	$(call dpo_round,dpo,sft,prefs,$(DEMO_DPO))
	touch $@

$(DEMO)/prefs2/done: $(RUNS)/dpo/done
	$(call prefs_round,make-prefs2,prefs2,dpo,$(DEMO_PREFS2))
	touch $@

$(RUNS)/dpo2/done: $(DEMO)/prefs2/done
	$(call dpo_round,dpo2,dpo,prefs2,$(DEMO_DPO2))
	touch $@

$(DEMO)/eval-%.json: $(RUNS)/%/done
	$(TIMED) eval-$* $(ARIMG) eval generator --ckpt $(RUNS)/$* $(DEMO_EVAL) out=$(DEMO)/eval-$* > $@.tmp
	mv $@.tmp $@

$(DEMO)/samples/done: $(RUNS)/$(LAST)/done
	$(TIMED) samples $(ARIMG) sample --ckpt $(RUNS)/$(LAST) -p "a red circle" -p "two blue squares on a white background" \
		-p "a green triangle left of a yellow circle" -p 'the word "CAT" in orange' --n 8 --grid \
		--out $(DEMO)/samples > $(DEMO)/samples.jsonl
	touch $@

$(DEMO)/summary.md: $(DEMO)/eval-pretrain.json $(foreach s,$(MORE),$(DEMO)/eval-$(s).json) $(DEMO)/eval-sft.json \
		$(DEMO)/eval-dpo.json $(if $(DEMO_PREFS2),$(DEMO)/eval-dpo2.json) $(if $(DEC_ARGS),$(DEMO)/eval-final.json) \
		$(DEMO)/samples/done
	$(PY) scripts/demo_summary.py $(DEMO) $(RUNS) > $@.tmp
	mv $@.tmp $@

bench: install  ## every scripts/bench_*.py (installs the bench-only extra: transformers)
	$(PY) -m pip install -q -e '.[bench]'
	@for f in scripts/bench_*.py; do echo "== $$f" >&2; $(PY) $$f || exit 1; done

# ---------------------------------------------------------------------------------------------------------
# make train-default: the recipe of the bundled model (arlm/default/model): the demo's stages with more data,
# a longer tokenizer and pretrain schedule (18,000 steps, then twice 15,000 more, each phase from the one before
# at a third of the peak lr and with a new data order), a preference round on many different accepted samples
# (32 per training prompt, 300 prompts per kind, the judge's yes/no, every accepted sample the chosen side of
# one pair: 5,359 pairs) and DPO for two epochs over them (669 steps of 16 pairs), a second round the same way
# from that DPO run's own samples (sampling seed 1: 5,912 pairs, 739 steps), a larger decoder trained alone on
# the tokenizer's frozen codes (9,000 steps) and then post-trained on the last model's draws (6,000 steps, then
# 3,000 more at half the lr), the full evaluation of every stage and of the last model with that decoder at the
# sampling settings its card recommends (top-k 3, DEFAULT_SAMPLING), then `arimg export` and the README's
# picture. About 380 minutes on 2 cores; interrupted, it continues where it stopped (the stages resume exactly)
# when run again.
DEFAULT_ARGS = DEMO=data/default RUNS=runs/default SYNTH=data/default-synth DEMO_N=100000 \
	TOK_ARGS=trainer.max_steps=9000 PRETRAIN_ARGS=trainer.max_steps=18000 \
	PRETRAIN_MORE_ARGS="trainer.max_steps=15000 trainer.lr=1e-3 data.seed=1" \
	PRETRAIN_MORE2_ARGS="trainer.max_steps=15000 trainer.lr=1e-3 data.seed=2" \
	DEMO_PREFS="reward=accept margin=0.5 pairs=disjoint k=32 per_kind=300 batch_size=64" \
	DEMO_DPO="trainer.max_steps=669 dpo.ntp_weight=1 trainer.compile=false" \
	DEMO_PREFS2="reward=accept margin=0.5 pairs=disjoint k=32 per_kind=300 batch_size=64 seed=1" \
	DEMO_DPO2="trainer.max_steps=739 dpo.ntp_weight=1 trainer.compile=false" DEMO_EVAL="'seeds=[0,1,2]'" \
	DEC_ARGS=trainer.max_steps=9000 POST_ARGS=trainer.max_steps=6000 \
	POST2_ARGS="trainer.max_steps=3000 trainer.lr=2.5e-4 data.seed=1" FINAL_SAMPLING="$(DEFAULT_SAMPLING)"
DEFAULT_SAMPLING = top_k=3

train-default: $(VENV)/.installed  ## the bundled default model's recipe (about 380 min on 2 cores; rerun to continue)
	$(MAKE) data/default/summary.md $(DEFAULT_ARGS)
	$(ARIMG) export --ckpt runs/default/dpo2 --tokenizer runs/default/tok-post2 --out arlm/default/model \
		$(addprefix --sampling ,$(DEFAULT_SAMPLING)) --name arimg-default --overwrite --eval data/default/eval-final.json
	$(PY) scripts/model_sheet.py data/default/eval-final docs/default-model.png --per-kind 8
	@cat data/default/summary.md

clean-demo:  ## remove the demo's outputs (the next make demo starts from nothing)
	rm -rf $(DEMO) $(SYNTH) $(SYNTH)-val $(SYNTH)-tok $(RUNS)/tok-gen $(RUNS)/pretrain $(RUNS)/pretrain-more \
		$(RUNS)/pretrain-more2 $(RUNS)/sft $(RUNS)/dpo $(RUNS)/dpo2 $(RUNS)/tok-dec $(RUNS)/tok-post $(RUNS)/tok-post2 \
		$(RUNS)/final

clean: clean-demo  ## remove the virtualenv and the demo's outputs
	rm -rf $(VENV)
