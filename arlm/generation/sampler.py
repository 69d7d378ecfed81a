"""`arimg sample`: prompts in, PNG files and one JSON line per image out. A `Sampler` is a transformer run with
its image tokenizer, ready to turn prompts into images through the decoding engine (arlm.transformer.sample)
and the one sample -> decode -> judge path (arlm.generation.judged); every image draws from its own seed
(`image_seed`), so an image is the same whatever the batch or the process it is drawn in."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from arlm.errors import ConfigError, UserError
from arlm.generation.judged import sample_and_judge
from arlm.judge import JudgeConfig, score
from arlm.log import progress
from arlm.perf import resolve_precision
from arlm.synth import parse_size
from arlm.tokenizer.codec import load_tokenizer, read_image
from arlm.transformer.ckpt import load_model
from arlm.transformer.sample import Settings, check_prompt
from arlm.transformer.sequence import LayoutError
from arlm.viz import contact_sheet



def image_seed(seed: int, prompt: str, index: int) -> int:
    """The seed of image `index` of `prompt`: the same wherever the prompt comes in a run or batch."""
    return zlib.crc32(f"{seed}\0{prompt}\0{index}".encode())


@dataclass
class Request:
    n: int = 1
    batch_size: int = 16
    seed: int = 0
    size: str | None = None  # "N" or "HxW" pixels; None: the grid the model was trained on
    grid_sheet: bool = False  # one contact sheet per prompt
    prefix_image: str | None = None  # image completion: keep the first keep_rows token rows of this image
    keep_rows: int = 0
    rerank: int = 1  # > 1: draw this many candidates per image, keep the one the judge scores highest


def candidate_seed(seed: int, prompt: str, index: int, j: int) -> int:
    """The seed of reranking candidate j of image `index`; candidate 0 is the image drawn without reranking."""
    return image_seed(seed, prompt, index) if j == 0 else zlib.crc32(f"{seed}\0{prompt}\0{index}\0{j}".encode())


class Sampler:
    """A transformer run with its image tokenizer, ready to turn prompts into images."""

    def __init__(self, ckpt: str, settings: Settings, request: Request, device: str = "auto", ema: bool = True) -> None:
        try:
            settings.check()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if request.n < 1 or request.batch_size < 1 or request.rerank < 1:
            raise ConfigError("--n, --batch-size and --rerank must be at least 1")
        self.model, self.vocab, _ = load_model(ckpt, device, ema)
        self.device = next(self.model.parameters()).device
        self.precision = resolve_precision("auto", self.device)
        self.tok = load_tokenizer(self.vocab.tokenizer, str(self.device))
        self.settings, self.request = settings, request
        stride = self.tok.model.stride
        if request.size is not None:
            try:
                H, W = parse_size(request.size)
            except ValueError as e:
                raise ConfigError(f"--size: {e}") from None
            if H % stride or W % stride:
                raise ConfigError(f"--size {request.size} is not a multiple of the tokenizer's stride {stride}")
            self.grid = (H // stride, W // stride)
        elif self.vocab.grid:
            self.grid = tuple(self.vocab.grid)
        else:
            raise ConfigError("this run does not say its grid: pass --size")
        try:
            self.vocab.check_grid(*self.grid)
        except ValueError as e:
            raise ConfigError(f"--size: {e}") from None
        self.keep = self._prefix(request) if request.prefix_image else None

    def check(self, prompt: str) -> None:
        """A ConfigError when the prompt and the grid do not fit the model's context."""
        try:
            check_prompt(self.vocab, prompt, *self.grid, self.model.cfg.max_seq_len)
        except LayoutError as e:
            raise ConfigError(str(e)) from None

    def _prefix(self, request: Request) -> torch.Tensor:
        h, w = self.grid
        if not 0 < request.keep_rows < h:
            raise ConfigError(f"--keep-rows must lie in 1..{h - 1} for a {h}x{w} grid, got {request.keep_rows}")
        stride = self.tok.model.stride
        image = read_image(request.prefix_image, (h * stride, w * stride))
        return self.tok.encode_image(image)[:request.keep_rows]  # (k, w)

    def settings_json(self) -> dict:
        s = self.settings
        out = {"cfg": s.cfg, "cfg_schedule": s.cfg_schedule, "temperature": s.temperature, "top_k": s.top_k,
               "top_p": s.top_p, "min_p": s.min_p, "grid": list(self.grid)}
        if s.cfg_schedule == "interval":
            out["cfg_interval"] = list(s.cfg_interval)
        if self.keep is not None:
            out.update(prefix_image=self.request.prefix_image, keep_rows=self.request.keep_rows)
        return out

    def run(self, prompts: Iterable, out_dir: str | Path, eager: bool = False,
            total: int | None = None) -> Iterator[dict | Exception]:
        """One record per image ({"prompt", "index", "seed", "settings", "path"}), or the error of a prompt.
        `prompts` yields strings (or exceptions to pass on); `eager`: sample each prompt as soon as it comes
        (streaming stdin) instead of filling batches across prompts. Progress (images, tokens/s) goes to
        stderr; `total` is the number of prompts when known."""
        with progress() as bar:
            task = bar.add_task("sample", total=None if total is None else total * self.request.n, info="")
            yield from self._run(prompts, out_dir, eager, lambda k, info: bar.update(task, advance=k, info=info))

    def _run(self, prompts: Iterable, out_dir: str | Path, eager: bool, advance) -> Iterator[dict | Exception]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        req, h, w = self.request, *self.grid
        pending: list[tuple[int, str, int]] = []  # (prompt number, prompt, image index)
        done: dict[int, list[dict]] = {}

        R = req.rerank
        take = max(1, req.batch_size // R)  # images per batch: with reranking each is R candidates

        def flush(limit: int) -> Iterator[dict]:
            while len(pending) >= limit and pending:
                batch, pending[:] = pending[:take], pending[take:]
                t0 = time.perf_counter()
                picks = self._draw(batch, R)
                advance(len(batch), f"{len(batch) * R * h * w / (time.perf_counter() - t0):,.0f} tok/s")
                for (k, p, i), (img, j, scores) in zip(batch, picks):
                    path = out / f"{k:05d}-{i:03d}.png"
                    img.save(path)
                    rec = {"prompt": p, "index": i, "seed": req.seed, "image_seed": candidate_seed(req.seed, p, i, j),
                           "settings": self.settings_json(), "path": str(path)}
                    if R > 1:
                        rec["rerank"] = {"candidates": R, "chosen": j, "score": scores[j], "scores": scores}
                    done.setdefault(k, []).append(rec)
                    if len(done[k]) == req.n:
                        yield from self._finish(k, done.pop(k), out)

        for k, prompt in enumerate(prompts):
            if isinstance(prompt, Exception):
                yield prompt
                continue
            try:
                check_prompt(self.vocab, prompt, h, w, self.model.cfg.max_seq_len)
            except UserError as e:
                yield UserError(f"prompt {k + 1}: {e}")
                continue
            pending.extend((k, prompt, i) for i in range(req.n))
            yield from flush(1 if eager else req.batch_size)
        yield from flush(1)

    def _draw(self, batch: list[tuple[int, str, int]], R: int) -> list[tuple[Image.Image, int, list[float] | None]]:
        """(image, chosen candidate, candidates' graded scores) per (prompt number, prompt, index): without
        reranking the one image drawn; with it the first of the R candidates the judge scores highest."""
        seed, h, w = self.request.seed, *self.grid
        judged = sample_and_judge(self.model, self.vocab, [p for _, p, _ in batch for _ in range(R)],
                                  [candidate_seed(seed, p, i, j) for _, p, i in batch for j in range(R)], (h, w),
                                  self.settings, self.precision, self.tok, JudgeConfig() if R > 1 else None,
                                  self.request.batch_size, keep=self.keep)
        if R == 1:
            return [(j.image, 0, None) for j in judged]
        picks = []
        for b in range(len(batch)):
            group = judged[b * R:(b + 1) * R]
            scores = [round(score(g.verdict, g.prompt), 4) for g in group]
            best = max(range(R), key=scores.__getitem__)  # the first of the best
            picks.append((group[best].image, best, scores))
        return picks

    def _finish(self, k: int, records: list[dict], out: Path) -> Iterator[dict]:
        if self.request.grid_sheet:
            sheet = out / f"{k:05d}-grid.png"
            contact_sheet([Image.open(r["path"]) for r in records], cols=min(8, len(records)), cell=128).save(sheet)
            for r in records:
                r["sheet"] = str(sheet)
        yield from records
