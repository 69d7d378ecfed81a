"""Rewards: what make-prefs ranks a prompt's samples by and what GRPO's advantages come from, behind one
protocol. A reward scores one judged sample (arlm.generation.judged.Judged: prompt, codes, decoded image and,
where the reward asks for it, the judge's verdict):

- `judge` (default): the judge's graded score (arlm.judge.score: partial credit per claim);
- `accept`: 1 when the judge accepts the image for its prompt, else 0 (the measure itself);
- `module:function`: any callable (PIL image, prompt) -> number, imported by name, checked to be finite.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable
from typing import Protocol

from arlm.errors import ConfigError
from arlm.generation.judged import Judged
from arlm.judge import score


class Reward(Protocol):
    """Scores a judged sample. `needs_verdict`: the samples must be judged before they are scored."""

    name: str
    needs_verdict: bool

    def __call__(self, j: Judged) -> float: ...


class JudgeScore:
    """The judge's graded score of the sample for its prompt."""

    name, needs_verdict = "judge", True

    def __call__(self, j: Judged) -> float:
        return score(j.verdict, j.prompt)


class JudgeAccepts:
    """1 when the judge accepts the sample for its prompt, else 0: where the graded score also pays for the
    claims an image gets right, this is the measure itself."""

    name, needs_verdict = "accept", True

    def __call__(self, j: Judged) -> float:
        return float(j.verdict.ok)


class FunctionReward:
    """`fn(image, prompt)`, any callable, checked to return a finite number."""

    needs_verdict = False

    def __init__(self, name: str, fn: Callable[[object, str], float]) -> None:
        self.name, self.fn = name, fn

    def __call__(self, j: Judged) -> float:
        try:
            value = float(self.fn(j.image, j.prompt))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"the reward returned something that is not a number for {j.prompt!r}: {e}") from None
        if not math.isfinite(value):
            raise ConfigError(f"the reward returned {value} for {j.prompt!r}: rewards must be finite numbers")
        return value


def judge_accepts(image, prompt: str) -> float:
    """`accept` as a plain (image, prompt) -> number callable: the judge's verdict on one image."""
    from arlm.judge import judge

    return float(judge(image, prompt).ok)


def build_reward(spec: str) -> Reward:
    """The reward a `reward=` option names: `judge`, `accept` or 'module:function'."""
    if spec == "judge":
        return JudgeScore()
    if spec == "accept":
        return JudgeAccepts()
    return FunctionReward(spec, load_reward(spec))


def load_reward(spec: str) -> Callable[[object, str], float]:
    """The callable named by 'module:function', looked up as `python -m` would: the current directory
    first (a reward.py beside the data imports without PYTHONPATH); a ConfigError when it does not import."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"reward must be judge, accept or module:function, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"reward {spec}: {e}") from None
    if not callable(fn):
        raise ConfigError(f"reward {spec} is not callable")
    return fn
