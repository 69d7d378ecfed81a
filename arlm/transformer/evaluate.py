"""Does the generator draw what the prompt says? The one sample -> decode -> judge path of the project, and
`arimg eval generator` on top of it.

`sample_and_judge` serves every caller that judges a model's samples: the trainer's sample grids,
`arimg eval generator`, `scripts/judge_pretrain.py`, `scripts/cfg_curve.py` and `scripts/sweep_generator.py`.

`eval_generator` draws a fixed, seeded set of held-out prompts of every kind from the synthetic grammar (the
captions of `arimg data synth --seed prompt_seed`, one kind at a time; training sets use seed 0), or reads a
prompts file, samples `n` images per prompt for each sampling seed at the sampling settings of `arimg
sample`, judges each image, and reports accuracy per kind (averaged over the seeds, with their spread) and
the judge's graded score (partial credit, `arlm.judge.score`), the word exact-match rate, and diversity: the
share of distinct token grids among one prompt's images and the mean pixel distance between them. It writes
every image, `verdicts.jsonl` and a contact sheet per kind.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from arlm.judge import JudgeConfig, Verdict, judge_many, parse_caption, score, summarize
from arlm.transformer.model import Transformer
from arlm.transformer.sample import Settings, image_seed, sample
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
        # and an image must not depend on what it was drawn beside (--batch-size)
        for j in judged:
            j.image = Image.fromarray(tokenizer.decode(j.codes[None])[0].permute(1, 2, 0).numpy())
    if judge_cfg is not None:
        for j, v in zip(judged, judge_many(((j.image, j.prompt) for j in judged), judge_cfg)):
            j.verdict = v
    return judged


def verdict_labels(judged: Sequence[Judged]) -> tuple[list[str], list[bool | None]]:
    """Contact-sheet captions ("OK: prompt" / "no: prompt") and marks for judged images."""
    labels = [f"{'OK' if j.verdict.ok else 'no'}: {j.prompt}" if j.verdict else j.prompt for j in judged]
    return labels, [None if j.verdict is None else j.verdict.ok for j in judged]


# --------------------------------------------------------------------------------------------------------
# `arimg eval generator`


def grammar_samples(kinds: Sequence[str], per_kind: int, seed: int, size: tuple[int, int] = (64, 64)) -> list:
    """`per_kind` samples (arlm.synth.Sample: caption and image) of each kind, those of `arimg data synth --seed
    SEED --kinds KIND`: fixed and seeded."""
    from arlm.synth import generate

    return [s for kind in kinds for s in generate(per_kind, size, seed, kinds=(kind,))]


def grammar_prompts(kinds: Sequence[str], per_kind: int, seed: int, size: tuple[int, int] = (64, 64)) -> list[str]:
    """The captions of `grammar_samples`."""
    return [s.caption for s in grammar_samples(kinds, per_kind, seed, size)]


def read_prompt_file(path: str) -> list[str]:
    from arlm.errors import ConfigError, UserError

    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"prompts={path}: {e.strerror or e}") from None
    try:
        lines = [ln.strip() for ln in raw.decode("utf-8").splitlines()]
    except UnicodeDecodeError:
        raise UserError(f"prompts={path}: not UTF-8") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise ConfigError(f"prompts={path} holds no prompt")
    return lines


def choose_prompts(cfg) -> list[str]:
    """The prompts a config names: its prompts file, else `per_kind` captions of each of its `kinds` from the
    grammar (`prompt_seed`); eval generator's and make-prefs's configs share these keys."""
    if cfg.prompts is not None:
        return read_prompt_file(cfg.prompts)
    check_grammar_source(cfg)
    return grammar_prompts(cfg.kinds, cfg.per_kind, cfg.prompt_seed)


def check_grammar_source(cfg) -> None:
    """A ConfigError unless the config's `kinds` and `per_kind` name grammar prompts."""
    from arlm.errors import ConfigError
    from arlm.synth import KINDS

    if cfg.per_kind < 1 or not cfg.kinds or set(cfg.kinds) - set(KINDS):
        raise ConfigError(f"kinds must be a non-empty subset of {', '.join(KINDS)} and per_kind at least 1")


def image_jobs(prompts: Sequence[str], n: int) -> list[tuple[str, int]]:
    """(prompt, image index) for n images per prompt; a prompt listed twice takes the next indices, so no
    image is drawn (and counted) twice."""
    jobs, seen = [], Counter()
    for p in prompts:
        jobs += [(p, seen[p] + i) for i in range(n)]
        seen[p] += n
    return jobs


def diversity(judged: Sequence[Judged]) -> dict:
    """Per prompt: distinct token grids / images, and the mean absolute pixel difference (0..1) over pairs."""
    by_prompt: dict[str, list[Judged]] = {}
    for j in judged:
        by_prompt.setdefault(j.prompt, []).append(j)
    distinct, dist = [], []
    for group in by_prompt.values():
        if len(group) < 2:
            continue
        distinct.append(len({j.codes.numpy().tobytes() for j in group}) / len(group))
        if group[0].image is not None:
            px = [np.asarray(j.image, dtype=np.float32) / 255 for j in group]
            dist.append(float(np.mean([np.abs(a - b).mean() for a, b in itertools.combinations(px, 2)])))
    return {"distinct_grids": statistics.fmean(distinct) if distinct else None,
            "pixel_distance": statistics.fmean(dist) if dist else None, "prompts": len(distinct)}


def word_exact(verdicts: Sequence[Verdict], prompts: Sequence[str]) -> dict:
    """Text prompts: the share whose OCR read is the word exactly (the colour aside)."""
    hits = n = 0
    for v, p in zip(verdicts, prompts):
        exp = parse_caption(p)
        if exp is not None and exp.kind == "text":
            n += 1
            hits += v.ocr == exp.word
    return {"n": n, "correct": hits, "accuracy": hits / n if n else None}


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.pstdev(values)}


def eval_generator(ckpt: str, cfg) -> dict | None:
    """`arimg eval generator` (cfg: arlm.config.EvalGeneratorConfig); the JSON report, on rank 0 (None on the
    others).

    Under torchrun each rank samples and judges every world-th (prompt, index) job of each seed; rank 0
    gathers them and writes as one process: an image's seed is its own (`image_seed`) and its draw does not
    depend on its batch, so n processes give the images, verdicts and report of one."""
    from arlm import parallel
    from arlm.training import resolve_device

    with parallel.launched(resolve_device(cfg.device)) as (rank, world, device):
        return _eval_generator(ckpt, cfg, str(device) if world > 1 else cfg.device, rank, world)


def _eval_generator(ckpt: str, cfg, device: str, rank: int, world: int) -> dict | None:
    import contextlib

    from arlm import parallel
    from arlm.errors import ConfigError
    from arlm.log import log, progress
    from arlm.synth import KINDS
    from arlm.transformer.sample import Request, Sampler
    from arlm.viz import contact_sheet

    if cfg.n < 1 or cfg.batch_size < 1 or not cfg.seeds:
        raise ConfigError("n and batch_size must be at least 1, and seeds must name at least one seed")
    prompts = choose_prompts(cfg)
    parsed = [p for p in prompts if parse_caption(p) is not None]
    unparsed = len(prompts) - len(parsed)
    if not parsed:
        raise ConfigError(f"none of the {len(prompts)} prompt(s) follows the synthetic grammar: nothing to judge")
    if unparsed:
        log.warning("%d prompt(s) outside the synthetic grammar: counted as unparsed, not sampled", unparsed)

    settings = Settings.from_config(cfg.sampling)
    try:
        sampler = Sampler(ckpt, settings, Request(size=cfg.size), device)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for p in dict.fromkeys(parsed):
        sampler.check(p)
    out = Path(cfg.out)
    if rank == 0:  # rank 0 alone writes
        out.mkdir(parents=True, exist_ok=True)
    jobs = image_jobs(parsed, cfg.n)
    shared = parallel.share(jobs, rank, world)  # this rank's jobs
    index = {p: k for k, p in enumerate(dict.fromkeys(parsed))}  # file names by prompt number
    runs, records, every = [], [], []  # every: all seeds' verdicts, for the pooled figures
    with progress() as bar, (out / "verdicts.jsonl").open("w") if rank == 0 else contextlib.nullcontext() as details:
        task = bar.add_task("eval generator", total=len(shared) * len(cfg.seeds), info="")
        for seed in cfg.seeds:
            parts = parallel.gather_object(sample_and_judge(
                sampler.model, sampler.vocab, [p for p, _ in shared], [image_seed(seed, p, i) for p, i in shared],
                sampler.grid, settings, sampler.precision, sampler.tok, cfg.judge, cfg.batch_size,
                lambda k: bar.update(task, advance=k)))
            if rank != 0:
                continue
            judged = parallel.unshare(parts)
            folder = out / f"seed-{seed}"
            folder.mkdir(exist_ok=True)
            scores = [score(j.verdict, j.prompt) for j in judged]
            for (p, i), j, sc in zip(jobs, judged, scores):
                path = folder / f"{index[p]:05d}-{i:03d}.png"
                j.image.save(path)
                v = j.verdict
                details.write(json.dumps({"path": str(path), "prompt": p, "seed": seed, "kind": v.kind, "ok": v.ok,
                                          "score": round(sc, 4), "reason": v.reason}) + "\n")
            verdicts = [j.verdict for j in judged]
            every += verdicts
            summary = summarize(verdicts)
            for kind, row in summary["per_kind"].items():
                row["score"] = statistics.fmean(sc for j, sc in zip(judged, scores) if j.verdict.kind == kind)
            runs.append({"seed": seed, "summary": summary, "words": word_exact(verdicts, [j.prompt for j in judged]),
                         "diversity": diversity(judged)})
            bar.update(task, info=f"seed {seed}: {summary['accuracy']:.1%} ok")
            if seed == cfg.seeds[0]:
                records = judged
    if rank != 0:
        return None
    sheets = {}
    for kind in KINDS:
        mine = [j for j in records if j.verdict.kind == kind][:cfg.sheet_per_kind]
        if not mine:
            continue
        labels, marks = verdict_labels(mine)
        sheets[kind] = str(out / f"sheet-{kind}.png")
        contact_sheet([j.image for j in mine], labels, cols=cfg.n * max(1, 8 // cfg.n), marks=marks).save(sheets[kind])
    return _report(ckpt, cfg, settings, sampler, parsed, unparsed, runs, summarize(every), sheets, out)


def _report(ckpt, cfg, settings, sampler, parsed, unparsed, runs, pooled, sheets, out) -> dict:
    kinds = list(runs[0]["summary"]["per_kind"])
    per_kind = {}
    for k in kinds:
        accs, pool = [r["summary"]["per_kind"][k]["accuracy"] for r in runs], pooled["per_kind"][k]  # pool: all seeds
        per_kind[k] = {"n": pool["n"], "correct": pool["correct"], "accuracy": statistics.fmean(accs),
                       "spread": _spread(accs),
                       "score": statistics.fmean(r["summary"]["per_kind"][k]["score"] for r in runs)}
        if "by_length" in pool:  # the word kind by word length
            per_kind[k]["by_length"] = pool["by_length"]
    overall = [r["summary"]["accuracy"] for r in runs]
    words = [r["words"]["accuracy"] for r in runs if r["words"]["accuracy"] is not None]
    distinct = [r["diversity"]["distinct_grids"] for r in runs if r["diversity"]["distinct_grids"] is not None]
    pixel = [r["diversity"]["pixel_distance"] for r in runs if r["diversity"]["pixel_distance"] is not None]
    return {
        "ckpt": ckpt,
        "prompts": len(parsed),
        "prompt_source": cfg.prompts or f"synthetic grammar, seed {cfg.prompt_seed}, {cfg.per_kind} per kind",
        "n_per_prompt": cfg.n,
        "seeds": list(cfg.seeds),
        "settings": sampler.settings_json(),
        "per_kind": per_kind,
        "accuracy": statistics.fmean(overall),
        "accuracy_spread": _spread(overall),
        "words_exact": {"accuracy": statistics.fmean(words) if words else None,
                        "n": sum(r["words"]["n"] for r in runs), "correct": sum(r["words"]["correct"] for r in runs)},
        "diversity": {"distinct_grids": statistics.fmean(distinct) if distinct else None,
                      "pixel_distance": statistics.fmean(pixel) if pixel else None},
        "unparsed": unparsed,
        "n": sum(r["summary"]["n"] for r in runs),
        "per_seed": [{"seed": r["seed"], "accuracy": r["summary"]["accuracy"],
                      "per_kind": {k: v["accuracy"] for k, v in r["summary"]["per_kind"].items()},
                      "words_exact": r["words"]["accuracy"], "distinct_grids": r["diversity"]["distinct_grids"]}
                     for r in runs],
        "out": str(out),
        "verdicts": str(out / "verdicts.jsonl"),
        "sheets": sheets,
    }
