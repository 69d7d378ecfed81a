"""`arimg make-prefs`: preference pairs from a model's own samples, for `arimg dpo`.

For each prompt, K images are drawn (`sample_and_judge`, the project's one sample -> decode -> judge path)
at the sampling settings of evaluation, and each gets a reward (arlm.generation.rewards: `reward=judge`, the
default, `accept` or `module:function`), or people choose:

- `labels=FILE`: people's choices, JSON lines {"prompt": ..., "chosen": i, "rejected": j}, where i and j
  number the K samples of that prompt (the same seed gives the same images: look at a first run's
  `candidates/`, where every sample is a PNG listed in `candidates.jsonl`, and write the labels).

`truth=true` adds one more candidate to each grammar prompt: the synthetic set's own image of it, encoded by
the model's tokenizer and judged as a sample is (its reconstruction is what the reward sees). A model that
rarely draws a relation or a word right has no right sample of those prompts to prefer; the data has one
(chosen from the data, rejected from the model, as SPIN, Chen et al. 2024, pairs them). Its seed is -1 and
its `source` "data" in the records; it is index K in `candidates/`.

A pair (chosen, rejected) is kept when the rewards differ by at least `margin`: the best against the worst
candidate of each prompt (`pairs=best-worst`), every such pair (`pairs=all`: an accepted sample among 16 may
sit in 15 pairs), or pairs that share no sample (`pairs=disjoint`: the best with the worst, the second best
with the second worst, and so on while the margin holds, so that every chosen side is a different image).
Pairs are stored as the model's own **tokens**, never re-encoded from the decoded images (the tokenizer
would not give the same codes back), in webdataset shards: `KEY.json` (prompt, kind, seeds, rewards and
the reference model's per-sequence log-probs of both sides), `KEY.chosen.npy` / `KEY.rejected.npy` ((h, w)
codes) and `KEY.chosen.png` / `KEY.rejected.png` for people. Beside them: `tokens.json` (as `arimg pretokenize`
writes it), `prefs.json` (the vocabulary and how the pairs were made) and `pairs.png`, a contact sheet of
the first pair of each of the first 24 prompts, chosen left of rejected, to look for reward hacking by eye.

The samples come from the weights that `arimg dpo init_from=RUN` starts from (a run's trained weights, not
its EMA copy), and the reference log-probs are computed in fp32 by the same weights, so that DPO's rewards
start at zero.
"""

from __future__ import annotations

import io
import json
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from arlm import checkpoint, parallel
from arlm.config import MakePrefsConfig
from arlm.data.shards import encode_png, new_shard_set, prepare_out_dir
from arlm.device import resolve_device
from arlm.errors import ConfigError
from arlm.generation.judged import Judged, decode_and_judge, sample_and_judge
from arlm.generation.prompts import check_grammar_source, choose_prompts, grammar_samples
from arlm.generation.rewards import build_reward
from arlm.generation.sampler import Request, Sampler, image_seed
from arlm.judge import parse_caption
from arlm.log import log, progress
from arlm.tokenizer.codec import token_dtype
from arlm.transformer.data import PREFS_FILE, pad_text
from arlm.transformer.objectives import sequence_logps
from arlm.transformer.sample import Settings
from arlm.transformer.sequence import Vocab
from arlm.viz import contact_sheet

PAIR_MODES = ("best-worst", "all", "disjoint")
DATA_SEED = -1  # the seed of a truth=true candidate: the data's image, not a sample


def read_labels(path: str, k: int) -> list[tuple[str, int, int]]:
    """(prompt, chosen index, rejected index) per line of a labels file; a ConfigError on a bad line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"labels {path}: {e}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, c, r = str(row["prompt"]), row["chosen"], row["rejected"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"labels {path}:{n}: not a JSON object with prompt, chosen and rejected") from None
        if not (isinstance(c, int) and isinstance(r, int) and 0 <= c < k and 0 <= r < k and c != r):
            raise ConfigError(f"labels {path}:{n}: chosen and rejected must name two of the {k} samples (0..{k - 1}) "
                              f"of the prompt, got {c!r} and {r!r}")
        out.append((prompt, c, r))
    if not out:
        raise ConfigError(f"labels {path}: no labels")
    return out


def choose_pairs(rewards: list[float], margin: float, mode: str) -> list[tuple[int, int]]:
    """(chosen, rejected) indices of one prompt's samples whose rewards differ by at least `margin` (up to float
    rounding: 0.6 - 0.4 clears 0.2). `disjoint` pairs the best with the worst, the second best with the second
    worst and so on while the gap clears the margin and is above 0 (a tie is no preference): with yes/no rewards
    that is every sample of the rarer side; with graded ones it may be fewer than the most disjoint pairs."""
    def clears(c: int, r: int) -> bool:
        return rewards[c] - rewards[r] >= margin - 1e-9

    if mode == "best-worst":
        best = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
        worst = min(range(len(rewards)), key=lambda i: (rewards[i], i))
        return [(best, worst)] if best != worst and clears(best, worst) else []
    if mode == "disjoint":
        order = sorted(range(len(rewards)), key=lambda i: (-rewards[i], i))
        out = []
        for c, r in zip(order[:len(order) // 2], reversed(order)):
            if rewards[c] <= rewards[r] or not clears(c, r):
                break
            out.append((c, r))
        return out
    return [(i, j) for i in range(len(rewards)) for j in range(len(rewards))
            if i != j and clears(i, j) and (rewards[i] > rewards[j] or i < j)]


@torch.no_grad()
def reference_logps(model, vocab: Vocab, prompts: list[str], codes: torch.Tensor, batch_size: int = 32) -> list[float]:
    """log p(codes | prompt) of each (prompt, (h, w) codes) under `model`, in fp32: what DPO compares with."""
    device = next(model.parameters()).device
    h, w = codes.shape[1:]
    out = []
    for b in range(0, len(prompts), batch_size):
        ids = [vocab.encode_text(p) for p in prompts[b:b + batch_size]]
        text, lengths = pad_text(ids, max(map(len, ids)))
        seq_len = vocab.seq_len(text.shape[1], h, w)
        visual = codes[b:b + batch_size].reshape(len(ids), -1).long()
        tokens, pos, region = vocab.build(text.to(device), lengths.to(device), visual.to(device), h, w, seq_len)
        out += sequence_logps(model(tokens[:, :-1], pos[:, :-1]), tokens, region).tolist()
    return out


def make_prefs(ckpt: str, cfg: MakePrefsConfig) -> dict | None:
    """`arimg make-prefs` (cfg: arlm.config.MakePrefsConfig); the JSON report, on rank 0 (None on the others).

    Under torchrun each rank samples and judges every world-th (prompt, index) job; rank 0 gathers them and
    goes on as one process: each image's seed is its own (`image_seed`) and its draw does not depend on the
    batch it is drawn in, so n processes write the files of one."""
    with parallel.launched(resolve_device(cfg.device), writes=cfg.out) as (rank, world, device):
        return _make_prefs(ckpt, cfg, str(device) if world > 1 else cfg.device, rank, world)


def _make_prefs(ckpt: str, cfg: MakePrefsConfig, device: str, rank: int = 0, world: int = 1) -> dict | None:
    if cfg.k < 2 or cfg.batch_size < 1 or cfg.shard_size < 1:
        raise ConfigError("k must be at least 2, batch_size and shard_size at least 1")
    if cfg.pairs not in PAIR_MODES:
        raise ConfigError(f"pairs must be one of {', '.join(PAIR_MODES)}, got {cfg.pairs!r}")
    if cfg.margin < 0:
        raise ConfigError(f"margin must be at least 0, got {cfg.margin}")
    if cfg.truth and (cfg.labels or cfg.prompts):
        raise ConfigError("truth=true adds the synthetic set's image of each grammar prompt: it takes no prompts= "
                          "or labels= (prompts without a known image)")
    labels = read_labels(cfg.labels, cfg.k) if cfg.labels else None
    reward = None if labels else build_reward(cfg.reward)
    settings = Settings.from_config(cfg.sampling)
    sampler = Sampler(ckpt, settings, Request(), device, ema=False)
    truths = _truth_images(cfg, sampler) if cfg.truth else {}
    prompts = (list(dict.fromkeys(p for p, _, _ in labels)) if labels else
               list(truths) if cfg.truth else list(dict.fromkeys(choose_prompts(cfg))))
    for p in prompts:
        sampler.check(p)
    out = Path(cfg.out)
    if rank == 0:
        prepare_out_dir(out, overwrite=cfg.overwrite)  # refuse an old set now, before minutes of sampling

    jobs = parallel.share([(p, i) for p in prompts for i in range(cfg.k)], rank, world)
    with progress() as bar:
        task = bar.add_task("make-prefs", total=len(jobs), info="")
        mine = sample_and_judge(sampler.model, sampler.vocab, [p for p, _ in jobs],
                                [image_seed(cfg.seed, p, i) for p, i in jobs], sampler.grid, settings,
                                sampler.precision, sampler.tok, cfg.judge if reward and reward.needs_verdict else None,
                                cfg.batch_size, lambda n: bar.update(task, advance=n))
    parts = parallel.gather_object(mine)
    if rank != 0:  # rank 0 alone goes on: pairs, reference log-probs and every file
        return None
    judged = parallel.unshare(parts)
    by_prompt: dict[str, list[Judged]] = {}
    for j in judged:
        by_prompt.setdefault(j.prompt, []).append(j)
    if truths:  # index k of each prompt: the data's own image, through the tokenizer and the judge as a sample
        data = [Judged(p, DATA_SEED, sampler.tok.encode_image(im)) for p, im in truths.items()]
        decode_and_judge(data, sampler.tok, cfg.judge if reward.needs_verdict else None)
        for j in data:
            by_prompt[j.prompt].append(j)

    rewards = {p: [reward(j) for j in js] for p, js in by_prompt.items()} if not labels else {}
    _write_candidates(out / "candidates", prompts, by_prompt, rewards)
    pairs = ([(p, c, r) for p, c, r in labels] if labels else
             [(p, c, r) for p in prompts for c, r in choose_pairs(rewards[p], cfg.margin, cfg.pairs)])
    if not pairs:
        raise ConfigError(f"no pair of samples differs by the margin {cfg.margin} in reward over {len(prompts)} "
                          f"prompt(s) x {cfg.k} samples: lower margin or raise k")
    chosen = [by_prompt[p][c] for p, c, _ in pairs]
    rejected = [by_prompt[p][r] for p, _, r in pairs]
    written, kinds = _write_pairs(out, cfg, sampler, pairs, chosen, rejected, rewards)

    tokens = {"tokenizer": checkpoint.record_path(sampler.vocab.tokenizer, out), "grid": list(sampler.grid),
              "codebook_size": sampler.vocab.codebook_size, "samples": len(pairs)}
    (out / "tokens.json").write_text(json.dumps(tokens, indent=1))
    source = f"labels {cfg.labels}" if labels else reward.name
    report = {"ckpt": ckpt, "out": str(out), "prompts": len(prompts), "samples": len(judged), "pairs": len(pairs),
              "per_kind": dict(kinds), "reward": source, "margin": cfg.margin, "mode": "labels" if labels else cfg.pairs,
              "settings": sampler.settings_json(), "shards": [str(p) for p in written]}
    if rewards:
        flat = [x for xs in rewards.values() for x in xs]
        report["reward_mean"] = statistics.fmean(flat)
        report["reward_chosen"] = statistics.fmean(rewards[p][c] for p, c, _ in pairs)
        report["reward_rejected"] = statistics.fmean(rewards[p][r] for p, _, r in pairs)
        report["prompts_without_pair"] = sum(1 for p in prompts if not choose_pairs(rewards[p], cfg.margin, cfg.pairs))
    if truths:
        report["truth"] = {"candidates": len(truths), "mean_reward": statistics.fmean(rewards[p][-1] for p in prompts),
                           "chosen": sum(source_of(jc) == "data" for jc in chosen),
                           "rejected": sum(source_of(jr) == "data" for jr in rejected)}
    (out / PREFS_FILE).write_text(json.dumps({**report, "vocab": json.loads(sampler.vocab.to_json())}, indent=1))
    _pairs_sheet(out / "pairs.png", chosen, rejected)
    report["sheet"] = str(out / "pairs.png")
    log.info("%d pairs from %d prompts x %d samples in %s", len(pairs), len(prompts), cfg.k, out)
    return report


def _write_pairs(out: Path, cfg: MakePrefsConfig, sampler: Sampler, pairs: list[tuple[str, int, int]],
                 chosen: list[Judged], rejected: list[Judged], rewards: dict[str, list[float]]) -> tuple[list, Counter]:
    """The pairs as preference shards in `out`, each side's tokens with its reference log-prob (fp32, the
    sampling weights); (the shards written, pairs per kind)."""
    model = sampler.model.float()
    ref_c, ref_r = (reference_logps(model, sampler.vocab, [j.prompt for j in side], torch.stack([j.codes for j in side]))
                    for side in (chosen, rejected))
    dtype = token_dtype(sampler.vocab.codebook_size)
    kinds = Counter()
    with new_shard_set(out, cfg.shard_size, overwrite=cfg.overwrite) as writer:
        for n, ((p, c, r), jc, jr, lc, lr) in enumerate(zip(pairs, chosen, rejected, ref_c, ref_r)):
            expect = parse_caption(p)
            kind = expect.kind if expect else None
            kinds[kind or "other"] += 1
            record = {"prompt": p, "kind": kind, "ref_logps": [lc, lr],
                      "chosen": {"index": c, "seed": jc.seed, "source": source_of(jc),
                                 "reward": rewards[p][c] if rewards else None},
                      "rejected": {"index": r, "seed": jr.seed, "source": source_of(jr),
                                   "reward": rewards[p][r] if rewards else None}}
            files = {"json": json.dumps(record).encode()}
            for side, j in (("chosen", jc), ("rejected", jr)):
                buf = io.BytesIO()
                np.save(buf, j.codes.numpy().astype(dtype))
                files[f"{side}.npy"] = buf.getvalue()
                files[f"{side}.png"] = encode_png(j.image)
            writer.write(f"{n:07d}", files)
    return writer.written, kinds


def _pairs_sheet(path: Path, chosen: list[Judged], rejected: list[Judged]) -> None:
    """The first pair of each of the first 24 prompts, chosen left of rejected (pairs=all gives one prompt
    dozens, which would fill the sheet)."""
    firsts = {}
    for jc, jr in zip(chosen, rejected):
        firsts.setdefault(jc.prompt, (jc, jr))
    shown = list(firsts.values())[:24]
    labels = [t for jc, jr in shown for t in (f"chosen: {jc.prompt}", "rejected")]
    contact_sheet([im for jc, jr in shown for im in (jc.image, jr.image)], labels, cols=8,
                  marks=[m for _ in shown for m in (True, False)]).save(path)


def _write_candidates(folder: Path, prompts: list[str], by_prompt: dict[str, list[Judged]],
                      rewards: dict[str, list[float]]) -> None:
    """Every sample as PNG, `PROMPT#-INDEX.png`, and `candidates.jsonl` (path, prompt, index, seed, reward):
    what people look at to write a labels file, or to check the reward by eye."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "candidates.jsonl").open("w") as f:
        for k, p in enumerate(prompts):
            for i, j in enumerate(by_prompt[p]):
                path = folder / f"{k:05d}-{i:02d}.png"
                j.image.save(path)
                f.write(json.dumps({"path": str(path), "prompt": p, "index": i, "seed": j.seed, "source": source_of(j),
                                    "reward": rewards[p][i] if rewards else None}) + "\n")


def source_of(j: Judged) -> str:
    """"data" for the synthetic set's own image of a prompt (truth=true; seed -1), else "model"."""
    return "data" if j.seed == DATA_SEED else "model"


def _truth_images(cfg: MakePrefsConfig, sampler: Sampler) -> dict:
    """prompt -> the synthetic set's image of it at the model's image size (the first, where captions repeat):
    the grammar prompts of `cfg` (kinds, per_kind, prompt_seed) drawn at that size."""
    check_grammar_source(cfg)
    stride = sampler.tok.model.stride
    size = (sampler.grid[0] * stride, sampler.grid[1] * stride)
    out = {}
    for s in grammar_samples(cfg.kinds, cfg.per_kind, cfg.prompt_seed, size):
        out.setdefault(s.caption, s.image)
    return out
