"""`arimg eval generator`: does the generator draw what the prompt says?

`eval_generator` draws a fixed, seeded set of held-out prompts of every kind from the synthetic grammar (the
captions of `arimg data synth --seed prompt_seed`, one kind at a time; training sets use seed 0), or reads a
prompts file, samples `n` images per prompt for each sampling seed at the sampling settings of `arimg
sample`, judges each image, and reports accuracy per kind (averaged over the seeds, with their spread and a
95% interval over prompts) and the judge's graded score (partial credit, `arlm.judge.score`), the word
exact-match rate, and diversity: the share of distinct token grids among one prompt's images and the mean
pixel distance between them. It writes every image, `verdicts.jsonl` and a contact sheet per kind.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from arlm import parallel
from arlm.device import resolve_device
from arlm.errors import ConfigError
from arlm.generation.judged import Judged, sample_and_judge, verdict_labels
from arlm.generation.prompts import choose_prompts, image_jobs
from arlm.generation.sampler import Request, Sampler, image_seed
from arlm.judge import Verdict, check_reader, parse_caption, score, summarize
from arlm.log import log, progress
from arlm.synth import KINDS
from arlm.transformer.sample import Settings
from arlm.viz import contact_sheet



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


def interval95(prompts: Sequence[str], ok: Sequence[bool]) -> float | None:
    """Half-width of the 95% interval of an accepted share whose images come in groups by prompt: the
    cluster-robust standard error (a prompt's images are not independent draws: an easy prompt passes at
    every seed), 1.96 of them. With one image per prompt it is the binomial interval. None under 2 prompts."""
    groups: dict[str, list[int]] = {}
    for p, o in zip(prompts, ok):
        g = groups.setdefault(p, [0, 0])
        g[0], g[1] = g[0] + bool(o), g[1] + 1
    if len(groups) < 2:
        return None
    n = sum(g[1] for g in groups.values())
    share = sum(g[0] for g in groups.values()) / n
    var = sum((c - share * m) ** 2 for c, m in groups.values()) / n ** 2 * len(groups) / (len(groups) - 1)
    return 1.96 * var ** 0.5


def _spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.pstdev(values)}


def eval_generator(ckpt: str, cfg) -> dict | None:
    """`arimg eval generator` (cfg: arlm.config.EvalGeneratorConfig); the JSON report, on rank 0 (None on the
    others).

    Under torchrun each rank samples and judges every world-th (prompt, index) job of each seed; rank 0
    gathers them and writes as one process: an image's seed is its own (`image_seed`) and its draw does not
    depend on its batch, so n processes give the images, verdicts and report of one."""
    with parallel.launched(resolve_device(cfg.device)) as (rank, world, device):
        return _eval_generator(ckpt, cfg, str(device) if world > 1 else cfg.device, rank, world)


def _eval_generator(ckpt: str, cfg, device: str, rank: int, world: int) -> dict | None:
    if cfg.n < 1 or cfg.batch_size < 1 or not cfg.seeds:
        raise ConfigError("n and batch_size must be at least 1, and seeds must name at least one seed")
    check_reader(cfg.judge, evaluation=True)
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
    runs, records, every, asked = [], [], [], []  # every: all seeds' verdicts, for the pooled figures
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
            asked += [j.prompt for j in judged]
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
    return _report(ckpt, cfg, settings, sampler, parsed, unparsed, runs, summarize(every), sheets, out,
                   list(zip(asked, every)))


def _report(ckpt, cfg, settings, sampler, parsed, unparsed, runs, pooled, sheets, out, judged) -> dict:
    kinds = list(runs[0]["summary"]["per_kind"])
    per_kind = {}
    for k in kinds:
        accs, pool = [r["summary"]["per_kind"][k]["accuracy"] for r in runs], pooled["per_kind"][k]  # pool: all seeds
        mine = [(p, v.ok) for p, v in judged if v.kind == k]
        per_kind[k] = {"n": pool["n"], "correct": pool["correct"], "accuracy": statistics.fmean(accs),
                       "interval95": interval95(*zip(*mine)) if mine else None, "spread": _spread(accs),
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
