"""`arimg eval generator` and the one sample -> decode -> judge path: the report's shape and counts, seeds
averaged, the verdict file, agreement with the judge, diversity, bad inputs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from arlm.judge import judge
from arlm.synth import KINDS
from arlm.tokenizer.codec import load_tokenizer
from arlm.generation.evaluate import diversity, interval95
from arlm.generation.judged import Judged, sample_and_judge
from arlm.generation.prompts import grammar_prompts
from arlm.transformer.ckpt import load_model
from arlm.transformer.sample import Settings


def test_interval95_is_binomial_for_independent_images_and_wider_for_prompts_that_agree():
    """One image per prompt: 1.96 binomial standard errors (with the G/(G-1) small-sample factor). Four images
    per prompt that always agree carry one prompt's information: the interval is that of the 25 prompts."""
    ok = [True] * 30 + [False] * 70
    p = 0.3
    assert interval95([str(i) for i in range(100)], ok) == pytest.approx(1.96 * (p * (1 - p) / 99) ** 0.5)
    prompts = [str(i) for i in range(25) for _ in range(4)]
    agree = [i < 8 for i in range(25) for _ in range(4)]  # 8 of 25 prompts pass at every image
    p = 8 / 25
    assert interval95(prompts, agree) == pytest.approx(1.96 * (p * (1 - p) / 24) ** 0.5)
    mixed = [k % 2 == 0 for k in range(100)]  # every prompt half right: no spread between prompts
    assert interval95(prompts, mixed) == 0.0
    assert interval95(["a", "a"], [True, False]) is None  # one prompt: no interval


def test_eval_generator_end_to_end(run_cli, tiny_lm, tmp_path):
    out = tmp_path / "eval"
    code, stdout, err = run_cli("eval", "generator", "--ckpt", tiny_lm, "per_kind=2", "n=2", "seeds=[0,1]",
                                f"out={out}", "sampling.top_k=8")
    assert code == 0, err
    report = json.loads(stdout)
    assert list(report["per_kind"]) == list(KINDS)
    for kind, row in report["per_kind"].items():
        assert row["n"] == 2 * 2 * 2, kind  # prompts x images x seeds
        assert row["accuracy"] == pytest.approx(row["spread"]["mean"])
        assert row["accuracy"] <= row["score"] <= 1  # partial credit is at least the share accepted
        mine = [r for r in (json.loads(ln) for ln in (out / "verdicts.jsonl").read_text().splitlines())
                if r["kind"] == kind]  # the interval is the verdicts', grouped by prompt
        assert row["interval95"] == interval95([r["prompt"] for r in mine], [r["ok"] for r in mine])
    assert report["n"] == 4 * 8 and report["unparsed"] == 0 and report["prompts"] == 8
    assert [r["seed"] for r in report["per_seed"]] == [0, 1]
    assert report["accuracy"] == pytest.approx(sum(r["accuracy"] for r in report["per_seed"]) / 2)
    assert report["settings"]["top_k"] == 8 and report["settings"]["cfg"] == 1.5  # the defaults of arimg sample
    assert report["words_exact"]["n"] == 2 * 2 * 2
    lengths = report["per_kind"]["text"]["by_length"]  # the word prompts split by word length, seeds pooled
    assert sum(r["n"] for r in lengths.values()) == report["per_kind"]["text"]["n"]
    assert sum(r["correct"] for r in lengths.values()) == report["per_kind"]["text"]["correct"]
    words = [p.split('"')[1] for p in grammar_prompts(["text"], 2, 1)]
    expected = {len(w): 2 * 2 * sum(len(v) == len(w) for v in words) for w in words}  # images x seeds
    assert {int(k): r["n"] for k, r in lengths.items()} == expected
    rows = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert len(rows) == report["n"]
    assert sum(r["ok"] for r in rows) == sum(v["correct"] for v in report["per_kind"].values())
    assert all((r["score"] == 1) == r["ok"] for r in rows)
    assert all(Path(r["path"]).is_file() and Path(r["path"]).parent.parent == out for r in rows)
    assert {r["prompt"] for r in rows} == set(grammar_prompts(KINDS, 2, 1))
    for kind in KINDS:
        assert (out / f"sheet-{kind}.png").is_file()
    assert 0 < report["diversity"]["distinct_grids"] <= 1


def test_a_second_run_gives_the_same_report(run_cli, tiny_lm, tmp_path):
    args = ("eval", "generator", "--ckpt", tiny_lm, "per_kind=1", "n=2", "kinds=[single,count]")
    a = json.loads(run_cli(*args, f"out={tmp_path / 'a'}")[1])
    b = json.loads(run_cli(*args, f"out={tmp_path / 'b'}")[1])
    for r in (a, b):
        r.pop("out"), r.pop("verdicts"), r.pop("sheets")
    assert a == b


def test_the_shared_path_gives_the_judges_verdicts(tiny_lm):
    model, vocab, _ = load_model(tiny_lm, "cpu")
    tok = load_tokenizer(vocab.tokenizer, "cpu")
    prompts = ["a red circle", "two blue squares", 'the word "HI" in green', "a red circle"]
    judged = sample_and_judge(model, vocab, prompts, [1, 2, 3, 4], tuple(vocab.grid), Settings(top_k=4),
                              tokenizer=tok, batch_size=3)
    assert [j.prompt for j in judged] == prompts
    for j in judged:
        assert j.verdict == judge(j.image, j.prompt)
        # the decoded picture is the tokenizer's decoding of the returned codes
        assert torch.equal(tok.decode(j.codes[None])[0].permute(1, 2, 0), torch.from_numpy(np.array(j.image)))
    codes_only = sample_and_judge(model, vocab, prompts, [1, 2, 3, 4], tuple(vocab.grid), Settings(top_k=4))
    assert all(c.image is None and c.verdict is None for c in codes_only)
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(judged, codes_only))  # batching does not matter


def test_diversity_counts_distinct_grids_and_pixel_distance():
    from PIL import Image

    black, white = Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), (255, 255, 255))
    same, other = torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.long)
    d = diversity([Judged("a", 0, same, black), Judged("a", 1, same, black), Judged("b", 0, same, black),
                   Judged("b", 1, other, white)])
    assert d["distinct_grids"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert d["pixel_distance"] == pytest.approx((0 + 1) / 2)


def test_bad_inputs(run_cli, tiny_lm, tiny_run, tmp_path):
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("a red circle\na cat on a mat\n\ntwo green squares\n")
    code, out, err = run_cli("eval", "generator", "--ckpt", tiny_lm, f"prompts={mixed}", "n=1", f"out={tmp_path / 'm'}")
    assert code == 0, err
    report = json.loads(out)
    assert report["unparsed"] == 1 and report["prompts"] == 2 and report["n"] == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, out, err = run_cli("eval", "generator", "--ckpt", tiny_lm, f"prompts={empty}", f"out={tmp_path / 'e'}")
    assert code == 2 and out == "" and "no prompt" in err and len(err.strip().splitlines()) == 1
    for args in ([f"--ckpt={tiny_run}"],  # a tokenizer run, not a transformer run
                 [f"--ckpt={tiny_lm}", "size=30"],  # not a multiple of the tokenizer's stride
                 [f"--ckpt={tiny_lm}", "kinds=[shapes]"],
                 [f"--ckpt={tiny_lm}", "sampling.top_p=0"],
                 [f"--ckpt={tiny_lm}", "nonsense=1"]):
        code, out, err = run_cli("eval", "generator", *args, f"out={tmp_path / 'x'}", "per_kind=1", "n=1")
        assert code == 2 and out == "" and err.startswith("arimg: error:") and len(err.strip().splitlines()) == 1, args
