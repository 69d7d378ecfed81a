"""The one sample -> decode -> judge path of the project. `sample_and_judge` serves every caller that judges a
model's samples: the trainer's sample grids, `arimg sample --rerank`, `arimg eval generator`, `arimg
make-prefs`, GRPO's groups and the scripts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from arlm.judge import JudgeConfig, Verdict, judge_many
from arlm.transformer.model import Transformer
from arlm.transformer.sample import Settings, sample
from arlm.transformer.sequence import Vocab


@dataclass
class Judged:
    """One sampled image: its codes (h, w), the decoded picture and the judge's verdict (None: not judged)."""

    prompt: str
    seed: int
    codes: torch.Tensor
    image: Image.Image | None = None
    verdict: Verdict | None = None


def sample_and_judge(model: Transformer, vocab: Vocab, prompts: Sequence[str], seeds: Sequence[int],
                     grid: tuple[int, int], settings: Settings, precision: str = "fp32", tokenizer=None,
                     judge_cfg: JudgeConfig | None = JudgeConfig(), batch_size: int = 16,
                     advance: Callable[[int], None] | None = None, keep: torch.Tensor | None = None) -> list[Judged]:
    """Image i shows prompts[i], drawn from seeds[i]; batches of `batch_size`. With a tokenizer (arlm.tokenizer
    .codec.Loaded) the codes are decoded, and with `judge_cfg` the images judged; without, only the codes
    come back (the processes of a sharded model that must sample together but do not write). `keep` (k, w):
    the first token rows of every image (image completion)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    out: list[Judged] = []
    for b in range(0, len(prompts), batch_size):
        ps, ss = list(prompts[b:b + batch_size]), list(seeds[b:b + batch_size])
        kept = None if keep is None else keep.unsqueeze(0).expand(len(ps), -1, -1)
        codes = sample(model, vocab, ps, ss, *grid, settings, precision, kept).cpu()
        out += decode_and_judge([Judged(p, s, c) for p, s, c in zip(ps, ss, codes)], tokenizer, None)
        if advance:
            advance(len(ps))
    return decode_and_judge(out, None, judge_cfg if tokenizer is not None else None)


def decode_and_judge(judged: list[Judged], tokenizer=None, judge_cfg: JudgeConfig | None = None) -> list[Judged]:
    """Fill in each item's image (decoded from its codes, with a tokenizer) and verdict (with `judge_cfg`), in
    place; the items back. Sampled codes and a data set's own encoded images take this one path."""
    if tokenizer is not None:
        # one image at a time: a convolution's rounding depends on the batch it runs in (a pixel may move by 1),
        # and an image must not depend on what it was drawn beside (--batch-size). A caption-aware tokenizer
        # draws each image with its prompt
        for j in judged:
            j.image = Image.fromarray(tokenizer.decode(j.codes[None], [j.prompt])[0].permute(1, 2, 0).numpy())
    if judge_cfg is not None:
        for j, v in zip(judged, judge_many(((j.image, j.prompt) for j in judged), judge_cfg)):
            j.verdict = v
    return judged


def verdict_labels(judged: Sequence[Judged]) -> tuple[list[str], list[bool | None]]:
    """Contact-sheet captions ("OK: prompt" / "no: prompt") and marks for judged images."""
    labels = [f"{'OK' if j.verdict.ok else 'no'}: {j.prompt}" if j.verdict else j.prompt for j in judged]
    return labels, [None if j.verdict is None else j.verdict.ok for j in judged]
