"""What every training stage shares: device and precision, the LR schedule, weight EMA, RNG state, the
run directory's picture and metric files."""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arlm.config import TrainerConfig
from arlm.errors import ConfigError, UserError
from arlm.device import resolve_device
from arlm.perf import resolve_precision


def setup(cfg: TrainerConfig) -> tuple[torch.device, str]:
    """Device and resolved precision; seeds every generator."""
    device = resolve_device(cfg.device)
    try:
        precision = resolve_precision(cfg.precision, device)
    except ValueError as e:
        raise ConfigError(f"trainer.{e}") from None
    seed_all(cfg.seed)
    return device, precision


def check(cfg: TrainerConfig) -> None:
    """The trainer config's one-line errors, before a stage reads anything."""
    if cfg.nonfinite not in ("skip", "stop"):
        raise ConfigError(f"trainer.nonfinite must be skip or stop, got {cfg.nonfinite!r}")
    if cfg.grad_accum < 1:
        raise ConfigError("trainer.grad_accum must be at least 1")
    if cfg.eval_every < 0 or cfg.max_minutes < 0:
        raise ConfigError("trainer.eval_every and trainer.max_minutes must be at least 0")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"trainer.schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    if not 0 < cfg.cooldown <= 1:
        raise ConfigError(f"trainer.cooldown is a share of the run, in (0, 1]; got {cfg.cooldown}")
    if cfg.optimizer not in ("adamw", "muon"):
        raise ConfigError(f"trainer.optimizer must be adamw or muon, got {cfg.optimizer!r}")


def seed_all(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _cosine(t: float, floor: float) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def _wsd(t: float, floor: float, cooldown: float) -> float:
    return 1.0 - (1 - floor) * max(0.0, t - (1 - cooldown)) / cooldown


SCHEDULES = ("cosine", "wsd")


def lr_at(step: int, cfg: TrainerConfig, elapsed_s: float | None = None) -> float:
    """The learning rate of `step`: a linear warm-up to cfg.lr over warmup_steps, then the decay
    (cfg.schedule) to cfg.lr * cfg.min_lr_ratio. Its progress t in [0, 1]: with max_minutes the share of the
    minutes that has passed (`elapsed_s`); else the cosine's counts the steps after the warm-up and wsd's
    the steps of the run (its cooldown is the run's last share)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.max_minutes:
        t = min(1.0, (elapsed_s or 0.0) / (60 * cfg.max_minutes))
    elif cfg.schedule == "wsd":
        t = min(1.0, step / max(1, cfg.max_steps))
    else:
        t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    if cfg.schedule == "wsd":
        return cfg.lr * _wsd(t, cfg.min_lr_ratio, cfg.cooldown)
    return cfg.lr * _cosine(t, cfg.min_lr_ratio)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group at `lr`, times the group's own `lr_scale` where it has one (Muon's groups)."""
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


class EMA:
    """Exponential moving average of a model's floating-point weights and buffers (kept in fp32)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.float(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)

    def apply_to(self, model: nn.Module) -> None:
        """Copy the averaged weights into `model` (other entries, e.g. integer buffers, are kept)."""
        model.load_state_dict({**model.state_dict(), **{k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()}})


def rng_state() -> dict[str, Any]:
    """Every generator a training step draws from, as plain data (loads with weights_only=True)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Metrics:
    """metrics.jsonl in the run directory: one JSON object per log step, appended and flushed. On resume
    the lines after the resumed step are dropped, so the file reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        self.file = open(self.path, "a")

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def rows(self) -> list[dict]:
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln]

    def close(self) -> None:
        self.file.close()


class NonFiniteError(UserError):
    """A loss or gradient that is not finite, with trainer.nonfinite=stop (or too many in a row)."""


def clip_gradients(params, max_norm: float) -> torch.Tensor:
    """The gradients' total norm, after clipping them to `max_norm` (0 = no clipping)."""
    params = [p for p in params if p.grad is not None]
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: the norm of the whole model


class NonFinite:
    """What a step does when its loss or gradient is NaN or Inf (trainer.nonfinite): the optimizer skips it, or
    the run stops before its next checkpoint, so that the last one written is the last good one. Reading
    the norm and the loss is a device sync: one per step, the price of never stepping on a NaN."""

    def __init__(self, cfg: TrainerConfig) -> None:
        check(cfg)
        self.cfg = cfg
        self.skipped = 0  # since the last log row
        self.streak = 0

    def ok(self, norm: torch.Tensor, loss: torch.Tensor, step: int, part: str = "") -> bool:
        """True when the step may be taken; False (after a warning) when it is to be skipped. `loss` counts
        too: a loss of +Inf can have a finite gradient (the derivative of x + inf is 1)."""
        grad_ok, loss_ok = torch.stack([norm.isfinite(), loss.detach().isfinite()]).tolist()  # one sync
        if grad_ok and loss_ok:
            self.streak = 0
            return True
        what = f"{part}{' ' if part else ''}{'loss' if not loss_ok else 'gradient'}"
        self.streak += 1
        if self.cfg.nonfinite == "stop" or self.streak > self.cfg.nonfinite_limit:
            why = "trainer.nonfinite=stop" if self.cfg.nonfinite == "stop" else \
                f"{self.streak} in a row, over trainer.nonfinite_limit={self.cfg.nonfinite_limit}"
            raise NonFiniteError(f"non-finite {what} at step {step + 1} ({why}): the run stops; its last "
                                 f"checkpoint is kept")
        self.skipped += 1
        from arlm.log import log

        log.warning("step %d: non-finite %s, the step is skipped", step + 1, what)
        return False

    def take(self) -> int:
        """The steps skipped since the last call (for the log row)."""
        n, self.skipped = self.skipped, 0
        return n


def prepare_run_dir(run: Path, kind: str, resume: bool, overwrite: bool, clear: bool = True) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to mix two runs in one folder.
    A fresh run clears the old checkpoints and pictures (overwrite=true) unless `clear` is False: a caller
    that still validates its inputs clears later, so that a failing start loses nothing."""
    from arlm import checkpoint

    last = checkpoint.latest(run)
    if resume:
        if last is None:
            raise UserError(f"resume=true but {run} has no checkpoint to resume from")
        checkpoint.resolve(last, kind)
        return last
    if last is not None and not overwrite:
        raise UserError(f"{run} already holds a run (latest {last.name}): pass resume=true to continue it or "
                        f"overwrite=true to start afresh")
    for old in ("checkpoints", "images") if clear else ():  # overwrite: nothing of the old run may mix in
        shutil.rmtree(run / old, ignore_errors=True)
    return None


def run_info() -> dict:
    """argv and versions, written beside the resolved config so that a reader can re-run a run."""
    import platform

    return {"argv": sys.argv, "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "platform": platform.platform()}
