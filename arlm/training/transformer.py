"""`arimg pretrain`, `arimg sft` and `arimg dpo`: one trainer for every stage of the transformer.

pretrain: next-token loss on the whole sequence, the text and layout targets weighted by `loss.text_weight`.
sft: starts from a pretrain checkpoint (its model config and weights), loss on the visual tokens only
(`loss.visual_only`), on a curated set or a filter of one (`data.kinds`, `data.caption_regex`), with its own
schedule (`trainer=sft`).
dpo: starts from a trained run, on the preference pairs of `arimg make-prefs` (arlm.training.dpo).

A stage is its batches and its objective (arlm.transformer.objectives, `_stage_parts`); everything else,
set-up and loop, is shared.

The loop: AdamW (no decay on norms and embeddings), warmup + cosine, gradient accumulation, clipping,
autocast (bf16 where it is fast, arlm.perf), optional torch.compile and weight EMA; parallelism is applied
from outside (arlm.parallel). Every `log_every` steps a metrics row (loss, visual loss, lr,
tokens/s, MFU against the matmul peak measured at start, memory); every `image_every` a sample grid of the
fixed prompts, judged (arlm.judge), and loss/judge plots; every `ckpt_every` an atomic checkpoint with the
vocabulary. Rank 0 alone writes; every rank runs the same steps. The batch of a step is a function of the
step (arlm.transformer.data), so `resume=true` continues the same run: on CPU the losses after a resume
equal those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import resource
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from arlm import checkpoint, parallel
from arlm.config import TrainTransformerConfig, to_yaml
from arlm.device import autocast, resolve_device
from arlm.errors import ConfigError, UserError
from arlm.generation.judged import sample_and_judge, verdict_labels
from arlm.generation.sampler import image_seed
from arlm.judge import summarize
from arlm.log import log, progress
from arlm.perf import DTYPES, matmul_flops, resolve_precision
from arlm.training import dpo, grpo
from arlm.training.common import (EMA, Metrics, NonFinite, clip_gradients, lr_at, prepare_run_dir, rng_state, run_info,
                                  seed_all, set_lr, set_rng_state)
from arlm.transformer.ckpt import KIND, VOCAB_FILE, read_vocab, vocab_json
from arlm.transformer.data import Batches, TokenInfo, caption_words, token_info
from arlm.transformer.model import Transformer
from arlm.transformer.objectives import NextPatch, NextToken
from arlm.transformer.sample import Settings, check_prompt
from arlm.transformer.sequence import LayoutError, Vocab
from arlm.viz import contact_sheet, line_plot

STAGES = ("pretrain", "sft", "dpo", "grpo")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay on matmul weights only: norms, biases and embeddings (the tied head included) keep theirs."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.startswith("embed") else keep).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS, KiB on Linux


def _setup_model_config(cfg: TrainTransformerConfig, ckpt: Path | None) -> Vocab | None:
    """A run that starts from a checkpoint takes its model config; returns the checkpoint's vocabulary."""
    if ckpt is None:
        return None
    stored = checkpoint.load_config(ckpt, TrainTransformerConfig)
    if stored.model != cfg.model:
        log.info("model config from %s", ckpt)
    cfg.model = stored.model
    return read_vocab(ckpt)


def _stage_parts(cfg: TrainTransformerConfig, vocab: Vocab, info, model: Transformer, device: torch.device,
                 precision: str, rank: int, world: int):
    """(batches, objective) of the stage: token batches and next-token loss, preference pairs and DPO, or
    groups sampled online and their rewards. For DPO with `dpo.epochs` it also sets `trainer.max_steps` from
    the pair count, which only the loaded pairs know."""
    args = (vocab, info, cfg.model.max_seq_len, device, rank, world, cfg.trainer.grad_accum)
    if cfg.stage == "grpo":
        return (grpo.OnlineBatches(cfg, vocab, info, model, device, precision, rank, world, cfg.trainer.grad_accum),
                grpo.GroupReward(cfg.grpo))
    if cfg.stage != "dpo":
        objective = NextPatch(cfg, device, tuple(info.grid)) if cfg.loss.patch > 1 else NextToken(cfg, device)
        return Batches(cfg.data, *args), objective
    dpo.check_config(cfg.dpo)  # before loading a reference model
    reference = None
    if cfg.dpo.reference == "live":  # the initial weights, also after a resume
        start = checkpoint.resolve(cfg.init_from, KIND)
        reference = Transformer(cfg.model, vocab.padded_size)
        checkpoint.load_into(reference, checkpoint.load_weights(start, "model"), start)
        reference = reference.to(device).eval().requires_grad_(False)
    batches = dpo.PrefBatches(cfg.data, *args)
    cfg.trainer.max_steps = dpo.schedule_steps(cfg.dpo, cfg.trainer.max_steps, batches.n, cfg.data.batch_size)
    return batches, dpo.Preference(cfg.dpo, reference)


def train(cfg: TrainTransformerConfig, yaml: str | None = None) -> Path:
    """Train the transformer for one stage; returns the run directory."""
    tc = cfg.trainer
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {cfg.stage!r}")
    if cfg.loss.patch < 1 or (cfg.loss.patch > 1 and cfg.stage not in ("pretrain", "sft")):
        raise ConfigError(f"loss.patch must be 1, or more for pretrain and sft only; got {cfg.loss.patch} for "
                          f"{cfg.stage}")
    if tc.grad_accum < 1:
        raise ConfigError("trainer.grad_accum must be at least 1")
    with parallel.launched(resolve_device(tc.device), writes=cfg.run_dir) as (rank, world, device):
        return _train(cfg, yaml, rank, world, device)


def _train(cfg: TrainTransformerConfig, yaml: str | None, rank: int, world: int, device: torch.device) -> Path:
    tc = cfg.trainer
    try:
        precision = resolve_precision(tc.precision, device)
    except ValueError as e:
        raise ConfigError(f"trainer.{e}") from None
    guard = NonFinite(tc)
    run = Path(cfg.run_dir)
    init = checkpoint.resolve(cfg.init_from, KIND) if cfg.init_from and not cfg.resume else None
    if cfg.stage in ("sft", "dpo", "grpo") and init is None and not cfg.resume:
        raise ConfigError(f"{cfg.stage} starts from a trained run: pass init_from=RUN")
    if init is not None and run.resolve() in init.resolve().parents:
        raise UserError(f"init_from={cfg.init_from} lies inside run_dir={run}: give the new stage its own run_dir")
    resume_from = prepare_run_dir(run, KIND, cfg.resume, cfg.overwrite, clear=False)  # cleared once all is checked
    saved_vocab = _setup_model_config(cfg, resume_from or init)
    if cfg.stage == "grpo":  # no token shards: the model writes its own data, in its checkpoint's vocabulary
        if not saved_vocab.grid:
            raise ConfigError(f"{resume_from or init} does not record its grid: grpo cannot sample it")
        info = TokenInfo(saved_vocab.codebook_size, saved_vocab.tokenizer, tuple(saved_vocab.grid))
    else:
        info = token_info(cfg.data.shards)
    # a checkpoint's model keeps its ids, the word list included; a new one counts its words in the data
    words = saved_vocab.words if saved_vocab is not None else caption_words(cfg.data, info)
    vocab = Vocab(info.codebook_size, info.tokenizer, grid=tuple(info.grid), words=words)
    if saved_vocab is not None:
        if not saved_vocab.compatible(vocab):
            raise LayoutError(f"the data's vocabulary (codebook {vocab.codebook_size}) is not the checkpoint's "
                              f"(codebook {saved_vocab.codebook_size}, grid up to {saved_vocab.max_grid})")
        vocab = dataclasses.replace(vocab, tokenizer=vocab.tokenizer or saved_vocab.tokenizer)
    for prompt in cfg.sample.prompts:
        check_prompt(vocab, prompt, *info.grid, cfg.model.max_seq_len)

    seed_all(tc.seed)  # the same initial weights in every process
    model = Transformer(cfg.model, vocab.padded_size)
    source = resume_from or init
    if source is not None:
        checkpoint.load_into(model, checkpoint.load_weights(source, "model"), source)
        log.info("weights from %s", source)
    model.to(device)
    batches, objective = _stage_parts(cfg, vocab, info, model, device, precision, rank, world)
    ema = EMA(model, tc.ema) if tc.ema > 0 else None
    if ema and resume_from is not None:
        ema.load_state_dict(checkpoint.load_weights(resume_from, "ema"))
    if rank == 0 and resume_from is None:  # every input checked: now an old run in run_dir may go
        prepare_run_dir(run, KIND, False, True)
    parallel.barrier()
    net = parallel.parallelize(model, tc.parallel, tc.compile, world)  # what the loop calls
    if ema:  # under FSDP2 each process averages its own shard of the weights
        ema.shadow = parallel.shard_like(model, ema.shadow)
    opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas),
                            fused=device.type == "cuda")
    step = 0
    if resume_from is not None:
        state = checkpoint.load_state(resume_from)
        parallel.load_optimizer_state(model, opt, state["opt"])
        set_rng_state(state["rng"])
        step = state["step"]
        log.info("resuming %s at step %d", run, step)

    # the config as run: with the model config a checkpoint imposed
    yaml = to_yaml(OmegaConf.structured(cfg)) if yaml is None or source is not None else yaml
    if rank == 0:
        (run / "images").mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(yaml)
        (run / "run.json").write_text(json.dumps({**run_info(), "world_size": world, "precision": precision,
                                                  "params": model.num_params()}, indent=1))
        (run / VOCAB_FILE).write_text(vocab_json(vocab, run))
    metrics = Metrics(run / "metrics.jsonl", step if resume_from is not None else None) if rank == 0 else None
    flops_tok = model.flops_per_token(batches.seq_len)
    if isinstance(objective, NextPatch):  # the model runs over the shorter sequence: FLOPs per data token
        short = objective.positions(batches.seq_len)
        flops_tok = model.flops_per_token(short) * short / batches.seq_len
    peak = matmul_flops(DTYPES[precision], device)  # per process, measured now: MFU is against this machine
    log.info("%s: %.2fM parameters, %d sequences of %d tokens per step (%d process(es) x %d micro-batch(es)), %s",
             cfg.stage, model.num_params() / 1e6, batches.tokens_per_step // batches.seq_len, batches.seq_len, world,
             tc.grad_accum, precision)  # DPO: two sequences (chosen, rejected) per pair of data.batch_size
    pictures = SamplePictures(cfg, vocab, info.grid, run, rank, precision, objective.plots)

    def save() -> None:
        weights = {"model": parallel.model_state(model)}
        if ema:
            weights["ema"] = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in ema.state_dict().items()}
        state = {"step": step, "opt": parallel.optimizer_state(model, opt), "rng": rng_state(), "world_size": world}
        if rank == 0:
            path = checkpoint.save(run, step, KIND, weights, state, yaml, keep=tc.keep_checkpoints,
                                   files={VOCAB_FILE: vocab_json(vocab, run).encode()})
            log.info("checkpoint %s", path)
        parallel.barrier()

    sums = torch.zeros(objective.n_stats, device=device)  # the objective's statistics since the last log
    t0, tokens_seen = time.perf_counter(), 0
    with progress() if rank == 0 else contextlib.nullcontext() as bar:
        task = bar.add_task(cfg.stage, total=tc.max_steps, completed=step, info="") if bar else None
        while step < tc.max_steps:
            lr = lr_at(step, tc)
            set_lr(opt, lr)
            micro = batches.batch(step)
            total = parallel.all_sum(sum(objective.norm(m) for m in micro).detach().clone())  # the global batch's
            step_stats, step_loss = torch.zeros_like(sums), torch.zeros((), device=device)
            for i, m in enumerate(micro):
                last = i == len(micro) - 1
                sync = net.no_sync() if world > 1 and tc.parallel == "ddp" and not last else contextlib.nullcontext()
                with sync:
                    with autocast(device, precision):
                        obj, stats = objective(net, m)
                    # / total: the mean over the global batch; * world: DDP and FSDP average gradients
                    (obj / total * world).backward()
                step_stats += stats
                step_loss += obj.detach()
            parallel.all_sum(step_loss)  # the gradient norm is the same on every rank; the loss is made so
            if guard.ok(clip_gradients(model.parameters(), tc.grad_clip), step_loss, step):
                opt.step()
                sums += step_stats
                if ema:
                    ema.update(model)
            opt.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += batches.tokens_per_step
            if step % tc.log_every == 0 or step == tc.max_steps:
                s = parallel.all_sum(sums.clone()).tolist()  # a device sync: only at log steps
                sums.zero_()
                elapsed = time.perf_counter() - t0
                tok_s = tokens_seen / elapsed
                stats = objective.metrics(s) if any(s) else {}  # none when every step since the last row was skipped
                row = {"step": step, **stats, "skipped_steps": guard.take(), "lr": lr, "tok_s": tok_s,
                       "mfu": flops_tok * tok_s / (peak * world), "mem_mib": memory_mib(device), "elapsed_s": elapsed}
                if metrics:
                    metrics.write(row)
                    shown = "  ".join(f"{k} {row[k]:.3f}" for k in objective.shown if k in row)
                    bar.update(task, completed=step, info=f"{shown}  lr {lr:.2e}  {tok_s:,.0f} tok/s  "
                                                          f"MFU {row['mfu']:.0%}  {row['mem_mib']:,.0f} MiB")
            if step % tc.image_every == 0 or step == tc.max_steps:
                pictures.write(step, model, ema, metrics)
            if step % tc.ckpt_every == 0 or step == tc.max_steps:
                save()
    if metrics:
        metrics.close()
    batches.skips.log_summary()
    return run


class SamplePictures:
    """Sample grids of the fixed prompts (EMA weights when kept), judged; loss and judge plots."""

    def __init__(self, cfg: TrainTransformerConfig, vocab: Vocab, grid, run: Path, rank: int, precision: str,
                 plots: dict[str, tuple[tuple[str, ...], bool]]) -> None:
        self.cfg, self.vocab, self.grid, self.run, self.rank, self.precision = cfg, vocab, tuple(grid), run, rank, precision
        self.plots = plots  # the objective's: file name -> (metrics, log scale)
        self._tokenizer = None
        self.enabled = bool(cfg.sample.prompts) and cfg.sample.n > 0
        if self.enabled and cfg.loss.patch > 1:  # not a next-token sampler until a phase at patch 1
            log.info("no sample grids while loss.patch=%d: the model predicts groups of tokens", cfg.loss.patch)
            self.enabled = False
        if self.enabled:  # decided alike in every process: under FSDP all of them must sample together
            try:
                checkpoint.resolve(vocab.tokenizer, "tokenizer")
            except UserError as e:
                log.warning("no sample grids: the image tokenizer of the token shards is not here (%s)", e)
                self.enabled = False

    def tokenizer(self):
        if self._tokenizer is None:
            from arlm.tokenizer.codec import load_tokenizer

            self._tokenizer = load_tokenizer(self.vocab.tokenizer, "cpu")
        return self._tokenizer

    def write(self, step: int, model: Transformer, ema: EMA | None, metrics: Metrics | None) -> None:
        if metrics:
            rows = metrics.rows()
            for name, (keys, log_y) in self.plots.items():
                line_plot(rows, list(keys), self.run / name, log_y=log_y)
        if not self.enabled:
            return
        sc = self.cfg.sample
        backup = None
        if ema is not None:
            backup = {k: v.clone() for k, v in model.state_dict().items()}
            ema.apply_to(model)
        prompts = [p for p in sc.prompts for _ in range(sc.n)]
        seeds = [image_seed(sc.seed, p, i) for p in sc.prompts for i in range(sc.n)]
        with torch.compiler.set_stance("force_eager"):  # shapes change every token: never compile the sampler
            judged = sample_and_judge(model, self.vocab, prompts, seeds, self.grid,
                                      Settings(temperature=sc.temperature, top_k=sc.top_k), self.precision,
                                      self.tokenizer() if self.rank == 0 else None)
        if backup is not None:
            model.load_state_dict(backup)
        if self.rank != 0:
            return
        labels, marks = verdict_labels(judged)
        contact_sheet([j.image for j in judged], labels, cols=max(sc.n, 8), marks=marks).save(
            self.run / "images" / f"samples-{step:07d}.png")
        summary = summarize([j.verdict for j in judged])
        row = {"step": step, "judge": summary["accuracy"],
               **{f"judge_{k}": v["accuracy"] for k, v in summary["per_kind"].items()}}
        if metrics:
            metrics.write(row)
            line_plot(metrics.rows(), [k for k in row if k.startswith("judge")], self.run / "judge.png")
        log.info("step %d: the judge accepts %d of %d samples", step, summary["correct"], summary["n"])
