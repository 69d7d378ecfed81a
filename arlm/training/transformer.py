"""The transformer's stages on the one Trainer (arlm.training.trainer): `arimg pretrain`, `sft`, `dpo` and `grpo`.

pretrain: next-token loss on the whole sequence, the text and layout targets weighted by `loss.text_weight`.
sft: starts from a pretrain checkpoint (its model config and weights), loss on the visual tokens only
(`loss.visual_only`), on a curated set or a filter of one (`data.kinds`, `data.caption_regex`), with its own
schedule (`trainer=sft`).
dpo: starts from a trained run, on the preference pairs of `arimg make-prefs` (arlm.training.dpo).
grpo: starts from a trained run, on groups of its own samples drawn as it trains (arlm.training.grpo).

A stage differs from another only in its batches and its objective (`STAGES`; the objectives live in
arlm.transformer.objectives, dpo and grpo). `TransformerStage` adds what every one of them shares: the optimizer
(arlm.training.optim: AdamW, or Muon on the blocks' matrices), parallelism and compilation applied from outside the model (arlm.parallel), a
metrics row with tokens/s and MFU against the matmul peak measured at start, sample grids of the fixed prompts
judged every `image_every` steps (arlm.judge), the held-out loss on `data.val_shards` every `eval_every`, and
the vocabulary in every checkpoint. The batch of a step is a function of the step (arlm.transformer.data), so
`resume=true` continues the same run: on CPU the losses after a resume equal those of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import resource
from pathlib import Path

import torch
from omegaconf import OmegaConf

from arlm import checkpoint, parallel
from arlm.config import TrainTransformerConfig, TransformerStageConfig, to_yaml
from arlm.device import resolve_device
from arlm.errors import ConfigError, UserError
from arlm.generation.judged import sample_and_judge, verdict_labels
from arlm.generation.sampler import image_seed
from arlm.judge import summarize
from arlm.log import log
from arlm.perf import DTYPES, matmul_flops, resolve_precision
from arlm.training import dpo, grpo
from arlm.training.common import EMA, Metrics, check, seed_all
from arlm.training.optim import make_optimizer
from arlm.training.trainer import Run, Trainer
from arlm.transformer.ckpt import KIND, VOCAB_FILE, read_vocab, vocab_json
from arlm.transformer.data import Batches, TokenInfo, caption_words, token_info
from arlm.transformer.model import Transformer
from arlm.transformer.objectives import NextPatch, NextToken
from arlm.transformer.sample import Settings, check_prompt
from arlm.transformer.sequence import LayoutError, Vocab
from arlm.viz import contact_sheet, line_plot


def memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS, KiB on Linux


def _setup_model_config(cfg: TransformerStageConfig, ckpt: Path | None) -> Vocab | None:
    """A run that starts from a checkpoint takes its model config; returns the checkpoint's vocabulary."""
    if ckpt is None:
        return None
    stored = checkpoint.load_config(ckpt, TrainTransformerConfig)
    if stored.model != cfg.model:
        log.info("model config from %s", ckpt)
    cfg.model = stored.model
    return read_vocab(ckpt)


def _pretrain_parts(cfg, vocab, info, model, device, precision, rank, world):
    """Token batches and the next-token (or next-patch) loss: pretrain and sft."""
    objective = NextPatch(cfg, device, tuple(info.grid)) if cfg.loss.patch > 1 else NextToken(cfg, device)
    return Batches(cfg.data, vocab, info, cfg.model.max_seq_len, device, rank, world, cfg.trainer.grad_accum), objective


def _dpo_parts(cfg, vocab, info, model, device, precision, rank, world):
    """Preference pairs and the DPO loss (against the shards' reference log-probs, or a live frozen copy)."""
    dpo.check_config(cfg.dpo)  # before loading a reference model
    reference = None
    if cfg.dpo.reference == "live":  # the initial weights, also after a resume
        start = checkpoint.resolve(cfg.init_from, KIND)
        reference = Transformer(cfg.model, vocab.padded_size)
        checkpoint.load_into(reference, checkpoint.load_weights(start, "model"), start)
        reference = reference.to(device).eval().requires_grad_(False)
    batches = dpo.PrefBatches(cfg.data, vocab, info, cfg.model.max_seq_len, device, rank, world, cfg.trainer.grad_accum)
    return batches, dpo.Preference(cfg.dpo, reference)


def _grpo_parts(cfg, vocab, info, model, device, precision, rank, world):
    """Groups sampled online from the model being trained, and the group-relative policy gradient."""
    return (grpo.OnlineBatches(cfg, vocab, info, model, device, precision, rank, world, cfg.trainer.grad_accum),
            grpo.GroupReward(cfg.grpo))


# the transformer's stages: name -> (batches, objective) builder; every other part of a stage is shared
STAGES = {"pretrain": _pretrain_parts, "sft": _pretrain_parts, "dpo": _dpo_parts, "grpo": _grpo_parts}


def _stage_parts(cfg: TransformerStageConfig, vocab: Vocab, info, model: Transformer, device: torch.device,
                 precision: str, rank: int, world: int):
    """(batches, objective) of the stage (`STAGES`)."""
    return STAGES[cfg.stage](cfg, vocab, info, model, device, precision, rank, world)


def train(cfg: TransformerStageConfig, yaml: str | None = None) -> Path:
    """Train the transformer for one stage; returns the run directory."""
    tc = cfg.trainer
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {cfg.stage!r}")
    if cfg.loss.patch < 1 or (cfg.loss.patch > 1 and cfg.stage not in ("pretrain", "sft")):
        raise ConfigError(f"loss.patch must be 1, or more for pretrain and sft only; got {cfg.loss.patch} for "
                          f"{cfg.stage}")
    check(tc)
    with parallel.launched(resolve_device(tc.device), writes=cfg.run_dir) as (rank, world, device):
        try:
            precision = resolve_precision(tc.precision, device)
        except ValueError as e:
            raise ConfigError(f"trainer.{e}") from None
        if cfg.stage in ("sft", "dpo", "grpo") and not cfg.init_from and not cfg.resume:
            raise ConfigError(f"{cfg.stage} starts from a trained run: pass init_from=RUN")
        run = Run(cfg.run_dir, KIND, cfg.resume, cfg.overwrite, cfg.init_from, rank)
        stage = TransformerStage(cfg, run, device, precision, rank, world)
        trainer = Trainer(tc, run, stage, device, precision, rank, world)
        # the config as run: with the model config a checkpoint imposed (and the steps of dpo.epochs)
        yaml = to_yaml(OmegaConf.structured(cfg)) if yaml is None or run.source is not None else yaml
        run.start(yaml, {"world_size": world, "stage": cfg.stage, "precision": precision,
                         "params": stage.model.num_params()},
                  {VOCAB_FILE: vocab_json(stage.vocab, run.path)})
        trainer.start()
        stage.describe()
        trainer.fit(tc.max_steps)
        stage.batches.skips.log_summary()
        return run.path


def _held_out(cfg: TransformerStageConfig, vocab: Vocab, info: TokenInfo, device: torch.device, rank: int,
              world: int) -> Batches | None:
    """The held-out token shards (`data.val_shards`) as batches of the training set's size, read once per
    evaluation, without caption dropout; None without them."""
    if not cfg.data.val_shards:
        return None
    if cfg.stage not in ("pretrain", "sft"):
        raise ConfigError(f"data.val_shards: a held-out loss is for pretrain and sft, not {cfg.stage}")
    data = dataclasses.replace(cfg.data, shards=cfg.data.val_shards, caption_dropout=0.0, mode="memory", kinds=None,
                               caption_regex=None)
    held = token_info(data.shards)
    if (held.codebook_size, tuple(held.grid)) != (info.codebook_size, tuple(info.grid)):
        raise ConfigError(f"data.val_shards={data.shards}: codebook {held.codebook_size} and grid {held.grid}, "
                          f"where the training shards have {info.codebook_size} and {info.grid}")
    batches = Batches(data, vocab, held, cfg.model.max_seq_len, device, rank, world, 1)
    if batches.steps_per_epoch < 1:
        raise ConfigError(f"data.val_shards={data.shards} holds fewer samples than data.batch_size")
    return batches


def _vocab(cfg: TransformerStageConfig, run: Run) -> tuple[Vocab, TokenInfo]:
    """The stage's vocabulary and token data: a checkpoint's model keeps its ids (and its model config); a new
    one counts its words in the data."""
    saved = _setup_model_config(cfg, run.source)
    if cfg.stage == "grpo":  # no token shards: the model writes its own data, in its checkpoint's vocabulary
        if not saved.grid:
            raise ConfigError(f"{run.source} does not record its grid: grpo cannot sample it")
        info = TokenInfo(saved.codebook_size, saved.tokenizer, tuple(saved.grid))
    else:
        info = token_info(cfg.data.shards)
    words = saved.words if saved is not None else caption_words(cfg.data, info)
    vocab = Vocab(info.codebook_size, info.tokenizer, grid=tuple(info.grid), words=words)
    if saved is not None:
        if not saved.compatible(vocab):
            raise LayoutError(f"the data's vocabulary (codebook {vocab.codebook_size}) is not the checkpoint's "
                              f"(codebook {saved.codebook_size}, grid up to {saved.max_grid})")
        vocab = dataclasses.replace(vocab, tokenizer=vocab.tokenizer or saved.tokenizer)
    for prompt in cfg.sample.prompts:
        check_prompt(vocab, prompt, *info.grid, cfg.model.max_seq_len)
    return vocab, info


class TransformerStage:
    """pretrain, sft, dpo and grpo on the one Trainer: a transformer, the stage's batches and objective
    (`STAGES`), its sample grids."""

    kind = KIND

    def __init__(self, cfg: TransformerStageConfig, run: Run, device: torch.device, precision: str, rank: int,
                 world: int) -> None:
        self.cfg, self.device, self.precision, self.rank, self.world = cfg, device, precision, rank, world
        self.name = cfg.stage
        self.vocab, info = _vocab(cfg, run)
        seed_all(cfg.trainer.seed)  # the same initial weights in every process
        self.model = Transformer(cfg.model, self.vocab.padded_size)
        if run.source is not None:
            checkpoint.load_into(self.model, checkpoint.load_weights(run.source, "model"), run.source)
            log.info("weights from %s", run.source)
        self.model.to(device)
        self.batches, self.loss = _stage_parts(cfg, self.vocab, info, self.model, device, precision, rank, world)
        if cfg.stage == "dpo":  # dpo.epochs: the steps only the loaded pairs know
            cfg.trainer.max_steps = dpo.schedule_steps(cfg.dpo, cfg.trainer.max_steps, self.batches.n,
                                                       cfg.data.batch_size)
        self.n_stats = self.loss.n_stats
        self.flops_tok = self.model.flops_per_token(self.batches.seq_len)
        if isinstance(self.loss, NextPatch):  # the model runs over the shorter sequence: FLOPs per data token
            short = self.loss.positions(self.batches.seq_len)
            self.flops_tok = self.model.flops_per_token(short) * short / self.batches.seq_len
        self.pictures_ = SamplePictures(cfg, self.vocab, info.grid, run.path, rank, precision, self.loss.plots)
        self.val = _held_out(cfg, self.vocab, info, device, rank, world) if cfg.trainer.eval_every else None

    def wrap(self) -> None:
        tc = self.cfg.trainer
        self.net = parallel.parallelize(self.model, tc.parallel, tc.compile, self.world)
        self.opt = make_optimizer(self.model, tc, self.device)

    def describe(self) -> None:
        """Once restored, before the first step: the matmul peak that MFU is measured against, and a log line."""
        self.peak = matmul_flops(DTYPES[self.precision], self.device)  # per process, measured now: this machine's
        b, tc = self.batches, self.cfg.trainer
        log.info("%s: %.2fM parameters, %d sequences of %d tokens per step (%d process(es) x %d micro-batch(es)), %s",
                 self.name, self.model.num_params() / 1e6, b.tokens_per_step // b.seq_len, b.seq_len, self.world,
                 tc.grad_accum, self.precision)  # DPO: two sequences (chosen, rejected) per pair of data.batch_size

    def micro_batches(self, step: int) -> list:
        return self.batches.batch(step)

    def norm(self, micro) -> torch.Tensor:
        return self.loss.norm(micro)

    def objective(self, micro) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss(self.net, micro)

    def after_step(self, step: int, applied: bool, guard) -> None:
        pass

    def figures(self, sums: list[float]) -> dict[str, float]:
        return self.loss.metrics(sums) if any(sums) else {}  # none when every step since the last row was skipped

    def speed(self, steps: int, elapsed: float) -> dict[str, float]:
        tok_s = steps * self.batches.tokens_per_step / elapsed
        return {"tok_s": tok_s, "mfu": self.flops_tok * tok_s / (self.peak * self.world),
                "mem_mib": memory_mib(self.device), "elapsed_s": elapsed}

    def shown(self, row: dict) -> str:
        shown = "  ".join(f"{k} {row[k]:.3f}" for k in self.loss.shown if k in row)
        return (f"{shown}  lr {row['lr']:.2e}  {row['tok_s']:,.0f} tok/s  MFU {row['mfu']:.0%}  "
                f"{row['mem_mib']:,.0f} MiB")

    def validate(self) -> dict[str, float]:
        """The objective's figures on the held-out token shards (`data.val_shards`), every batch of them."""
        if self.val is None:
            return {}
        self.model.eval()
        sums = torch.zeros(self.n_stats, device=self.device)
        for step in range(self.val.steps_per_epoch):
            for micro in self.val.batch(step):
                sums += self.loss(self.model, micro)[1]
        self.model.train()
        return self.loss.metrics(parallel.all_sum(sums).tolist())

    def pictures(self, step: int, ema, metrics) -> None:
        self.pictures_.write(step, self.model, ema, metrics)

    def extra_weights(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}  # the batch of a step is a function of the step

    def load_state_dict(self, state: dict) -> None:
        pass


class SamplePictures:
    """Sample grids of the fixed prompts (EMA weights when kept), judged; loss and judge plots."""

    def __init__(self, cfg: TransformerStageConfig, vocab: Vocab, grid, run: Path, rank: int, precision: str,
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
