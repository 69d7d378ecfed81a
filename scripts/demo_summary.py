"""The end of `make demo`: one Markdown summary on stdout (what each stage took, the accuracy per stage,
where the pictures are), from the files the stages left in DEMO and RUNS.

    python scripts/demo_summary.py data/demo runs > data/demo/summary.md
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

# the models judged, in pipeline order (dpo2: the default recipe's second preference round; final: the last
# model exported with the decoder trained alone and post-trained, its decoder and post stages); the optional
# ones are listed only where they ran
STAGES = ("pretrain", "sft", "dpo", "dpo2", "final")
OPTIONAL = {"dpo2", "final"}
KINDS = ("single", "count", "relation", "text")


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def times(path: Path) -> dict[str, float]:
    """Seconds per stage, summed over the runs of `make demo` that finished it (a resumed stage counts its
    parts)."""
    total: dict[str, float] = defaultdict(float)
    if path.is_file():
        for line in path.read_text().splitlines():
            stage, _, sec = line.partition("\t")
            try:
                total[stage] += float(sec)
            except ValueError:
                continue
    return dict(total)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _settings(report: dict) -> str:
    s = report.get("settings") or {}
    return ", ".join(f"{k} {s[k]:g}" for k in ("cfg", "temperature", "top_k") if isinstance(s.get(k), (int, float)))


def _mmss(s: float) -> str:
    m, sec = divmod(round(s), 60)  # 239.9 s is 4:00, not 3:60
    return f"{m}:{sec:02d}"


def summary(demo: Path, runs: Path) -> str:
    import torch

    from arlm.perf import matmul_flops

    torch.set_num_threads(os.cpu_count() or 1)
    gflops = matmul_flops(torch.float32) / 1e9
    lines = [f"# make demo: summary ({os.cpu_count()} cores, fp32 matmul {gflops:.0f} GFLOP/s measured now)", ""]
    wall = times(demo / "times.tsv")
    if wall:
        lines += ["| stage | wall (m:ss) |", "|---|---|"]
        lines += [f"| {stage} | {_mmss(sec)} |" for stage, sec in wall.items()]
        lines += [f"| **total** (install excluded) | **{_mmss(sum(wall.values()))}** |", ""]
    judge = _json(demo / "judge.json")
    if judge:
        lines.append(f"- the judge on {judge.get('n')} held-out synthetic images: {_pct(judge.get('accuracy'))} accepted")
    for name, label in (("tokenizer", "the tokenizer"), ("decoder", "the tokenizer with the decoder trained alone"),
                        ("post", "that decoder post-trained on the last model's draws"),
                        ("post2", "the same, post-trained further")):
        tok = _json(demo / f"{name}.json")
        if tok:
            lines.append(f"- {label}: {tok.get('psnr', float('nan')):.1f} dB PSNR on {tok.get('images')} held-out "
                         f"images, the judge accepts {_pct((tok.get('judge') or {}).get('accuracy'))} of its "
                         "reconstructions")
    for name, label in (("prefs", "make-prefs"), ("prefs2", "make-prefs, second round")):
        prefs = _json(demo / f"{name}.json")
        if prefs:
            lines.append(f"- {label}: {prefs.get('pairs')} pairs from {prefs.get('prompts')} prompts x "
                         f"{prefs.get('samples', 0) // max(1, prefs.get('prompts', 1))} samples")
    lines += ["", "Accepted by the judge, held-out prompts (`arimg eval generator`, "
              f"{_json(demo / 'eval-sft.json').get('n', '?')} images per stage):", "",
              "| stage | " + " | ".join(KINDS) + " | overall | distinct grids | sampling |", "|---" * (len(KINDS) + 4) + "|"]
    for stage in STAGES:
        report = _json(demo / f"eval-{stage}.json")
        if not report:
            continue
        per_kind = report.get("per_kind", {})
        cells = [_pct(per_kind.get(k, {}).get("accuracy")) for k in KINDS]
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {_pct(report.get('accuracy'))} | "
                     f"{_pct((report.get('diversity') or {}).get('distinct_grids'))} | {_settings(report)} |")
    lines += ["", "Pictures:",
              f"- the synthetic set: {demo}/contact-sheet.png",
              f"- tokenizer reconstructions: {runs}/tok-gen/images/"
              + (f", {runs}/tok-dec/images/ (the decoder trained alone)" if (runs / "tok-dec").is_dir() else "")
              + (f", {runs}/tok-post/images/ (post-trained)" if (runs / "tok-post").is_dir() else "")
              + (f", {runs}/tok-post2/images/ (post-trained further)" if (runs / "tok-post2").is_dir() else ""),
              "- training sample grids and loss plots: "
              + ", ".join(f"{runs}/{s}/images/" for s in STAGES
                          if s != "final" and ((runs / s).is_dir() or s not in OPTIONAL)),
              f"- preference pairs (chosen | rejected): {demo}/prefs/pairs.png"
              + (f", {demo}/prefs2/pairs.png" if (demo / "prefs2").is_dir() else ""),
              f"- judged samples per kind and stage: {demo}/eval-<stage>/sheet-<kind>.png",
              f"- samples for four prompts: {demo}/samples/", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", type=Path)
    ap.add_argument("runs", type=Path)
    args = ap.parse_args()
    print(summary(args.demo, args.runs))


if __name__ == "__main__":
    main()
