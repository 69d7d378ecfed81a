"""Row 6, non-finite loss: a NaN or Inf loss, or a NaN gradient behind a finite loss, planted at one step of a
tiny run of each stage. With trainer.nonfinite=skip the optimizer skips exactly that step (the checkpoint
after it holds the same weights as the one before, and metrics.jsonl counts it); with stop the run ends with
a one-line error and its last checkpoint is the last good step. Either way no weight is ever non-finite."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from unittest import mock

import torch

from tests.faults import build
from tests.faults.common import Row

BAD_STEP = 3  # of 6


class NanGrad(torch.autograd.Function):
    """Identity forward, NaN gradient backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def poison(x: torch.Tensor, how: str) -> torch.Tensor:
    if how == "nan loss":
        return x * float("nan")
    if how == "inf loss":
        return x + float("inf")
    return NanGrad.apply(x)


@contextlib.contextmanager
def planted(stage: str, how: str):
    """Poison the training forward of step BAD_STEP (the transformer objective's loss, or the tokenizer's
    reconstruction) in this process."""
    calls = [0]

    def bad_now() -> bool:
        if not torch.is_grad_enabled():  # sample grids and evaluation do not count
            return False
        calls[0] += 1
        return calls[0] == BAD_STEP

    if stage == "tokenizer":
        from arlm.tokenizer.model import Tokenizer

        forward = Tokenizer.forward

        def poisoned_forward(self, x, *args, **kwargs):
            recon, indices, losses = forward(self, x, *args, **kwargs)
            return (poison(recon, how) if self.training and bad_now() else recon), indices, losses

        with mock.patch.object(Tokenizer, "forward", poisoned_forward):
            yield
        return
    from arlm.training import transformer as train

    stage_parts = train._stage_parts

    def poisoned_parts(*args, **kwargs):
        batches, objective = stage_parts(*args, **kwargs)
        call = type(objective).__call__

        class Poisoned(type(objective)):
            def __call__(self, net, micro):
                obj, stats = call(self, net, micro)
                return (poison(obj, how) if bad_now() else obj), stats

        objective.__class__ = Poisoned
        return batches, objective

    with mock.patch.object(train, "_stage_parts", poisoned_parts):
        yield


def weights_at(run: Path, step: int) -> dict[str, torch.Tensor]:
    from arlm import checkpoint

    return checkpoint.load_weights(run / "checkpoints" / checkpoint.step_name(step))


def one_run(stage: str, how: str, mode: str, work: Path) -> str | None:
    """Why this planted fault was not handled as configured, or None."""
    from arimg.main import main
    from arlm import checkpoint

    run = work / f"nonfinite-{stage}"
    shutil.rmtree(run, ignore_errors=True)
    args = [a for a in build.stage_args(stage, work, run) if not a.startswith(("trainer.max_steps", "trainer.keep"))]
    args += ["trainer.max_steps=6", "trainer.keep_checkpoints=10", f"trainer.nonfinite={mode}"]
    with planted(stage, how):
        code = main(args)
    last = checkpoint.latest(run)
    finite = all(bool(torch.isfinite(v).all()) for v in checkpoint.load_weights(last).values() if v.is_floating_point())
    if not finite:
        return f"{stage} {how} {mode}: non-finite weights in {last}"
    if mode == "stop":
        step = checkpoint.read_meta(last)["step"]
        return None if code == 1 and step == BAD_STEP - 1 else f"{stage} {how} stop: exit {code}, last checkpoint {step}"
    if code != 0:
        return f"{stage} {how} skip: exit {code}"
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in rows if r.get("skipped_steps")]
    before, at = weights_at(run, BAD_STEP - 1), weights_at(run, BAD_STEP)
    same = before.keys() == at.keys() and all(torch.equal(before[k], at[k]) for k in before)
    # the tokenizer's codebook statistics move in its forward pass, which runs before the loss exists: compare
    # what the optimizer steps
    if stage == "tokenizer":
        same = all(torch.equal(before[k], at[k]) for k in before if "codebook" not in k and "quantizer" not in k)
    if skipped != [BAD_STEP] or not same:
        return f"{stage} {how} skip: skipped {skipped}, weights unchanged over the bad step: {same}"
    return None


def run(trials: int, workdir: Path, stages: tuple[str, ...] = build.STAGES) -> Row:
    """Every stage x (NaN loss, Inf loss, NaN gradient) x (skip, stop); `trials` rounds of them."""
    row = Row("non-finite loss or gradient", test="tests/faults/test_nonfinite.py::test_nonfinite_loss_is_skipped_or_stops")
    start = time.perf_counter()
    for _ in range(trials):
        for stage in stages:
            for how in ("nan loss", "inf loss", "nan gradient"):
                for mode in ("skip", "stop"):
                    row.record(one_run(stage, how, mode, workdir))
    row.seconds = time.perf_counter() - start
    return row
