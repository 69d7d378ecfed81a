"""The one training loop of arimg, and what a stage brings to it.

A `Stage` (VQ-VAE, VQ-GAN, decoder, decoder post-training: arlm.training.tokenizer; pretrain, SFT, DPO,
GRPO: arlm.training.transformer) declares its plug points: the micro-batches of a step, the objective that
turns one into a loss sum and a vector of statistics, what else happens after an optimizer step (the GAN's
discriminator), what it logs and draws, and the extra weights and state its checkpoints hold. The `Trainer`
owns the rest, written once: the schedule, gradient accumulation (each micro-batch's loss sum divided by the
global batch's normaliser, so N micro-batches on M processes give the gradient of one big batch), clipping,
the non-finite guard, the weight EMA, the log / picture / held-out / checkpoint cadence, and the run
directory (`Run`).

    for step in range(start, max_steps):             (or until trainer.max_minutes have passed)
        micro = stage.micro_batches(step)           -> forward and backward of each, scaled
        guard: finite loss and gradient?            -> optimizer step, EMA, stage.after_step
        every log_every: metrics row                 every eval_every: held-out figures
        every image_every: stage.pictures            every ckpt_every: checkpoint (atomic, resumable)

Under torchrun every process runs the same steps on its own part of each batch; rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from arlm import checkpoint, parallel
from arlm.config import TrainerConfig
from arlm.device import autocast
from arlm.errors import UserError
from arlm.log import log, progress
from arlm.training.common import (EMA, Metrics, NonFinite, clip_gradients, lr_at, prepare_run_dir, rng_state, run_info,
                                  set_lr, set_rng_state)



class Stage(Protocol):
    """What a stage brings to the Trainer (see the module docstring)."""

    name: str  # the progress bar's label
    kind: str  # the checkpoint kind: "tokenizer" or "transformer"
    model: nn.Module  # the module saved as "model" (and averaged by the EMA)
    net: nn.Module  # what a step calls: `model`, or its DDP / FSDP2 / compiled form (made by `wrap`)
    opt: torch.optim.Optimizer  # over `model`'s trained parameters (made by `wrap`)
    n_stats: int  # the length of the statistics vector `objective` returns

    def wrap(self) -> None: ...  # wrap `model` into `net` for the processes, and make `opt`

    def micro_batches(self, step: int) -> list: ...

    def norm(self, micro) -> torch.Tensor: ...  # this micro-batch's share of the global normaliser

    def objective(self, micro) -> tuple[torch.Tensor, torch.Tensor]: ...  # (loss sum, statistics)

    def after_step(self, step: int, applied: bool, guard: NonFinite) -> None: ...  # the optimizer step ran or not

    def figures(self, sums: list[float]) -> dict[str, float]: ...  # the log row's own figures (a collective)

    def speed(self, steps: int, elapsed: float) -> dict[str, float]: ...  # throughput since the start

    def shown(self, row: dict) -> str: ...  # the progress bar's text

    def validate(self) -> dict[str, float]: ...  # held-out figures, in eval mode ({}: no held-out set)

    def pictures(self, step: int, ema: EMA | None, metrics: Metrics | None) -> None: ...  # every process

    def extra_weights(self) -> dict[str, dict[str, torch.Tensor]]: ...  # beside "model" and "ema"

    def state_dict(self) -> dict[str, Any]: ...  # beside step, optimizer and RNG (every process calls it)

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class FixedBatch:
    """A stage of one fixed batch and a given objective, for benchmarks: the Trainer's own step (`train_step`),
    timed on data that costs nothing to read."""

    kind, name = "bench", "bench"

    def __init__(self, model: nn.Module, batch, objective, norm, opt: torch.optim.Optimizer, n_stats: int) -> None:
        self.model = self.net = model
        self.batch, self.loss, self.norm_of, self.opt, self.n_stats = batch, objective, norm, opt, n_stats

    def micro_batches(self, step: int) -> list:
        return [self.batch]

    def norm(self, micro) -> torch.Tensor:
        return self.norm_of(micro)

    def objective(self, micro) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loss(self.net, micro)

    def after_step(self, step: int, applied: bool, guard: NonFinite) -> None:
        pass


class Run:
    """One run directory (arlm.checkpoint's layout): the checkpoint to resume from, the files that describe
    the run, the metrics file and the checkpoints. Nothing old is removed before every input is checked."""

    def __init__(self, path: str | Path, kind: str, resume: bool, overwrite: bool, init_from: str | None = None,
                 rank: int = 0) -> None:
        self.path, self.kind, self.rank = Path(path), kind, rank
        self.init = checkpoint.resolve(init_from, kind) if init_from and not resume else None
        if self.init is not None and self.path.resolve() in self.init.resolve().parents:
            raise UserError(f"init_from={init_from} lies inside run_dir={self.path}: give the new stage its own "
                            f"run_dir")
        self.resume_from = prepare_run_dir(self.path, kind, resume, overwrite, clear=False)

    @property
    def source(self) -> Path | None:
        """The checkpoint whose weights the run starts from: the one it resumes, else init_from."""
        return self.resume_from or self.init

    def start(self, yaml: str, info: dict, files: dict[str, str] | None = None) -> None:
        """Every input checked (in every process): clear an old run (overwrite=true) and write the run's own
        files (rank 0). `yaml` and `files` (name -> text) are also written into every checkpoint."""
        parallel.barrier()
        if self.rank == 0:
            if self.resume_from is None:
                prepare_run_dir(self.path, self.kind, False, True)
            (self.path / "images").mkdir(parents=True, exist_ok=True)
            (self.path / "config.yaml").write_text(yaml)
            if self.init is not None:  # where the run started, as a path that travels with it (lineage)
                info = {**info, "init_from": checkpoint.record_path(self.init, self.path)}
            (self.path / "run.json").write_text(json.dumps({**run_info(), **info}, indent=1))
            for name, text in (files or {}).items():
                (self.path / name).write_text(text)
        self.yaml, self.files = yaml, {name: text.encode() for name, text in (files or {}).items()}

    def metrics(self, step: int) -> Metrics | None:
        return Metrics(self.path / "metrics.jsonl", step if self.resume_from is not None else None) \
            if self.rank == 0 else None

    def save(self, step: int, weights: dict, state: dict, keep: int) -> None:
        if self.rank == 0:
            path = checkpoint.save(self.path, step, self.kind, weights, state, self.yaml, keep=keep,
                                   files=self.files or None)
            log.info("checkpoint %s", path)
        parallel.barrier()


class Clock:
    """trainer.max_minutes: the run's wall time, as rank 0 measures it and every process reads it (so that all
    take the same lr and end at the same step), carried over a resume (the time saved in the checkpoint).

    The schedule follows this clock instead of a step count: the run ends on time however fast the machine is
    or becomes, at the price of a step count, and so of figures, that differ from one machine or run to the
    next (a resumed run takes its lr from the time, not the step: not bit-exact with an uninterrupted one)."""

    def __init__(self, minutes: float, device: torch.device, rank: int) -> None:
        self.budget, self.device, self.rank = 60 * minutes, device, rank
        self.t0, self.offset = time.perf_counter(), 0.0
        self.now = self.step_s = 0.0

    def read(self) -> float:
        """The elapsed seconds (a collective under torchrun); remembers the last step's length."""
        mine = time.perf_counter() - self.t0 + self.offset if self.rank == 0 else 0.0
        now = float(parallel.all_sum(torch.tensor(mine, dtype=torch.float64, device=self.device)))
        self.step_s, self.now = now - self.now if self.now else 0.0, now
        return now

    def ends_after_this_step(self) -> bool:
        """True when one more step like the last would pass the budget."""
        return self.now + self.step_s >= self.budget


class Trainer:
    """The loop (see the module docstring) for one stage on one run."""

    def __init__(self, tc: TrainerConfig, run: Run, stage: Stage, device: torch.device, precision: str,
                 rank: int = 0, world: int = 1) -> None:
        """`stage` holds its model whole, not yet wrapped: the EMA starts from (or resumes) its full weights."""
        self.tc, self.run, self.stage, self.device, self.precision = tc, run, stage, device, precision
        self.rank, self.world = rank, world
        self.guard = NonFinite(tc)
        self.ema = EMA(stage.model, tc.ema) if tc.ema > 0 else None
        if self.ema and run is not None and run.resume_from is not None:
            self.ema.load_state_dict(checkpoint.load_weights(run.resume_from, "ema"))
        self.step = 0
        self.sums = torch.zeros(stage.n_stats, device=device)  # the statistics since the last log row
        self.clock = Clock(tc.max_minutes, device, rank) if tc.max_minutes else None

    def start(self) -> None:
        """The stage wraps its model (DDP, FSDP2, compile) and makes its optimizer; then the optimizer, the stage's
        own state, the RNG and the step of the checkpoint the run resumes."""
        self.stage.wrap()
        if self.ema:  # under FSDP2 each process averages its own shard of the weights
            self.ema.shadow = parallel.shard_like(self.stage.model, self.ema.shadow)
        src = self.run.resume_from
        if src is None:
            return
        state = checkpoint.load_state(src)
        opt = state["opt"]
        if isinstance(opt, dict) and "layout" in opt:
            parallel.load_optimizer_state(self.stage.model, self.stage.opt, opt)
        else:  # a tokenizer run saved before the one trainer: the optimizer's own state_dict
            self.stage.opt.load_state_dict(opt)
        self.stage.load_state_dict(state)
        set_rng_state(state["rng"])
        self.step = state["step"]
        if self.clock:
            self.clock.offset = state.get("elapsed_s", 0.0)
        log.info("resuming %s at step %d", self.run.path, self.step)

    def save(self) -> None:
        weights = {"model": parallel.model_state(self.stage.model)}
        if self.ema:
            weights["ema"] = {k: v.full_tensor() if hasattr(v, "full_tensor") else v
                              for k, v in self.ema.state_dict().items()}
        weights.update(self.stage.extra_weights())
        state = {"step": self.step, "opt": parallel.optimizer_state(self.stage.model, self.stage.opt),
                 **self.stage.state_dict(), "rng": rng_state(), "world_size": self.world}
        if self.clock:
            state["elapsed_s"] = self.clock.now
        self.run.save(self.step, weights, state, self.tc.keep_checkpoints)

    def train_step(self, step: int, elapsed_s: float | None = None) -> bool:
        """One optimizer step over the step's micro-batches; whether it was applied (finite)."""
        stage, tc = self.stage, self.tc
        lr = lr_at(step, tc, elapsed_s)
        set_lr(stage.opt, lr)
        micro = stage.micro_batches(step)
        total = parallel.all_sum(sum(stage.norm(m) for m in micro).detach().clone())  # the global batch's
        step_stats = torch.zeros(stage.n_stats, device=self.device)
        step_loss = torch.zeros((), device=self.device)
        for i, m in enumerate(micro):
            last = i == len(micro) - 1
            no_sync = self.world > 1 and tc.parallel == "ddp" and not last and hasattr(stage.net, "no_sync")
            with stage.net.no_sync() if no_sync else contextlib.nullcontext():
                with autocast(self.device, self.precision):
                    obj, stats = stage.objective(m)
                # / total: the mean over the global batch; * world: DDP and FSDP average gradients
                (obj / total * self.world).backward()
            step_stats += stats
            step_loss += obj.detach()
        parallel.all_sum(step_loss)  # the gradient norm is the same on every rank; the loss is made so
        applied = self.guard.ok(clip_gradients(stage.model.parameters(), tc.grad_clip), step_loss, step)
        if applied:
            stage.opt.step()
            self.sums += step_stats
            if self.ema:
                self.ema.update(stage.model)
        stage.after_step(step, applied, self.guard)
        stage.opt.zero_grad(set_to_none=True)
        return applied

    def log_row(self, metrics: Metrics | None, bar, task, steps: int, elapsed: float) -> None:
        sums = parallel.all_sum(self.sums.clone()).tolist() if len(self.sums) else []  # a sync: log steps only
        self.sums.zero_()
        row = {"step": self.step, **self.stage.figures(sums), "skipped_steps": self.guard.take(),
               "lr": self.stage.opt.param_groups[0]["lr"], **self.stage.speed(steps, elapsed)}
        if metrics:
            metrics.write(row)
            bar.update(task, completed=round(self.clock.now) if self.clock else self.step, info=self.stage.shown(row))

    def held_out(self, metrics: Metrics | None) -> None:
        """The stage's held-out figures, logged in a row of their own (`val_` keys)."""
        with torch.no_grad(), autocast(self.device, self.precision):
            figures = self.stage.validate()
        if figures and metrics:
            metrics.write({"step": self.step, **{f"val_{k}": v for k, v in figures.items()}})
            log.info("step %d: held out %s", self.step, "  ".join(f"{k} {v:.4f}" for k, v in figures.items()))

    def fit(self, max_steps: int) -> None:
        """Train to `max_steps`, or with trainer.max_minutes until the clock says the time is up."""
        tc, clock = self.tc, self.clock
        metrics = self.run.metrics(self.step)
        parallel.barrier()  # rank 0 has written the run's first files
        t0, start = time.perf_counter(), self.step
        if clock:
            log.info("trainer.max_minutes=%g: the schedule follows the clock (%.0f s left)", tc.max_minutes,
                     clock.budget - clock.offset)
        total = round(clock.budget) if clock else max_steps
        with progress() if self.rank == 0 else contextlib.nullcontext() as bar:
            task = bar.add_task(self.stage.name, total=total, completed=self.step if not clock else 0,
                                info="") if bar else None
            while clock or self.step < max_steps:
                elapsed = clock.read() if clock else None
                self.train_step(self.step, elapsed)
                self.step += 1
                last = clock.ends_after_this_step() if clock else self.step == max_steps
                if self.step % tc.log_every == 0 or last:
                    self.log_row(metrics, bar, task, self.step - start, time.perf_counter() - t0)
                if tc.eval_every and (self.step % tc.eval_every == 0 or last):
                    self.held_out(metrics)
                if self.step % tc.image_every == 0 or last:
                    self.stage.pictures(self.step, self.ema, metrics)
                if self.step % tc.ckpt_every == 0 or last:
                    self.save()
                if last:
                    break
        if metrics:
            metrics.close()
