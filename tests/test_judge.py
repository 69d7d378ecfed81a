"""The judge: grammar round trip, accuracy on fresh synthetic samples, rejection of wrong content.

Text tests need tesseract and fail (not skip) without it: CI installs it (`make install`).
"""

from __future__ import annotations

import json
from itertools import product

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from arlm import synth
from arlm.errors import UserError
from arlm.judge import (OUTSIDE, Expectation, JudgeConfig, judge, judge_many, paired_change, parse_caption, score,
                        summarize)

CFG = JudgeConfig()
PER_KIND = 60
SEED = 4242  # tests only; scripts/judge_figures.py reports on a seed no test uses


def every_caption():
    """Every caption the grammar allows (words: a few), with the Expectation it must parse to."""
    pairs = list(product(synth.COLORS, synth.SHAPES))
    tails = [("", None)] + [(f" on {synth.article(b)} {b} background", b) for b in synth.BACKGROUNDS]
    for tail, bg in tails:
        for c, s in pairs:
            yield f"{synth.article(c)} {c} {s}{tail}", Expectation("single", ((c, s),), background=bg)
            for word, n in synth.NUMBERS.items():
                yield f"{word} {c} {s}s{tail}", Expectation("count", ((c, s),) * n, background=bg)
            for word in ("AX", "CROW", "BANANA"):
                yield f'the word "{word}" in {c}{tail}', Expectation("text", word=word, text_color=c, background=bg)
        for (c0, s0), (c1, s1), rel in product(pairs[::4], pairs[1::3], synth.RELATIONS):
            caption = f"{synth.article(c0)} {c0} {s0} {rel} {synth.article(c1)} {c1} {s1}{tail}"
            yield caption, Expectation("relation", ((c0, s0), (c1, s1)), relation=rel, background=bg)


def test_parse_every_template():
    for caption, want in every_caption():
        assert parse_caption(caption) == want, caption


def test_parse_round_trips_generated_captions():
    for s in synth.generate(400, (64, 64), seed=SEED + 1):
        exp = parse_caption(s.caption)
        rec = s.record
        assert exp is not None and exp.kind == rec["kind"], s.caption
        assert exp.objects == tuple((o["color"], o["shape"]) for o in rec["objects"])
        assert (exp.relation, exp.word) == (rec["relation"], rec["word"])
        assert exp.background in (None, rec["background"])


@pytest.mark.parametrize("caption", [
    "", "a circle", "a red", "an red circle", "a orange circle", "a pink circle", "a red hexagon",
    "one red circle", "two red circle", "four red circles", "a red circle on a white",
    "a red circle on a blue background",
    "a red circle near a blue square", 'the word "crow" in red', 'the word "A" in red', 'the word "ABCDEFG" in red',
    'the word CROW in red', "a red circle left of", "A red circle", "a red circle.",
])
def test_parse_rejects_garbage(caption):
    assert parse_caption(caption) is None
    v = judge(np.zeros((64, 64, 3), np.uint8), caption)
    assert (v.ok, v.kind, v.reason) == (False, None, OUTSIDE)


@pytest.fixture(scope="module")
def fresh():
    """PER_KIND fresh samples of each kind at 64x64 with their verdicts."""
    samples = [s for kind in synth.KINDS for s in synth.generate(PER_KIND, (64, 64), seed=SEED, kinds=(kind,))]
    verdicts = list(judge_many(((s.image, s.caption) for s in samples), CFG))
    return samples, verdicts


@pytest.mark.parametrize("kind", synth.KINDS)
def test_accepts_own_images(fresh, kind):
    samples, verdicts = fresh
    mine = [(s, v) for s, v in zip(samples, verdicts) if s.record["kind"] == kind]
    wrong = [(s.caption, v.reason) for s, v in mine if not v.ok]
    assert all(v.kind == kind for _, v in mine)
    assert len(wrong) <= 0.02 * len(mine), wrong


def test_rejects_shuffled_captions(fresh):
    samples, _ = fresh
    perm = np.random.default_rng(SEED).permutation(len(samples))
    perm = np.roll(perm, 1)[np.argsort(perm)]  # one cycle through all: no image keeps its caption
    assert not np.any(perm == np.arange(len(samples)))
    verdicts = list(judge_many(((s.image, samples[j].caption) for s, j in zip(samples, perm)), CFG))
    accepted = [samples[j].caption for v, j in zip(verdicts, perm) if v.ok]
    assert len(accepted) <= 0.10 * len(samples), accepted


def test_summary(fresh):
    samples, verdicts = fresh
    extra = judge(samples[0].image, "a red circle, please")
    report = summarize(verdicts + [extra])
    json.dumps(report)
    assert report["n"] == len(samples) + 1 and report["unparsed"] == 1
    assert set(report["per_kind"]) == set(synth.KINDS)
    assert all(r["n"] == PER_KIND for r in report["per_kind"].values())
    assert report["correct"] == sum(v.ok for v in verdicts)
    # the word kind, by the length of the word asked for: the same verdicts, split
    words = [(s.caption.split('"')[1], v) for s, v in zip(samples, verdicts) if v.kind == "text"]
    assert all(v.word == w for w, v in words)
    lengths = report["per_kind"]["text"]["by_length"]
    assert sorted(lengths) == sorted({str(len(w)) for w, _ in words})
    for k, r in lengths.items():
        assert r["n"] == sum(len(w) == int(k) for w, _ in words)
        assert r["correct"] == sum(len(w) == int(k) and v.ok for w, v in words)
    assert all("by_length" not in r for kind, r in report["per_kind"].items() if kind != "text")


def test_non_square():
    samples = list(synth.generate(40, (64, 128), seed=SEED + 2))
    verdicts = list(judge_many(((s.image, s.caption) for s in samples), CFG))
    wrong = [(s.caption, v.reason) for s, v in zip(samples, verdicts) if not v.ok]
    assert not wrong
    tall = list(synth.generate(20, (96, 64), seed=SEED + 3))
    assert all(judge(s.image, s.caption).ok for s in tall)


def test_numpy_and_pil_agree():
    for s in synth.generate(8, (64, 64), seed=SEED + 4, kinds=("single", "relation")):
        assert judge(np.asarray(s.image), s.caption) == judge(s.image, s.caption)


def test_judge_many_keeps_order():
    samples = list(synth.generate(24, (64, 64), seed=SEED + 5))
    pairs = [(s.image, s.caption) for s in samples]
    assert list(judge_many(pairs, JudgeConfig(workers=3))) == [judge(i, c) for i, c in pairs]


# ------------------------------------------------------------------------------------------------------
# wrong content, made by hand


def one(kind, seed=SEED + 6, size=(64, 64)):
    return next(synth.generate(1, size, seed=seed, kinds=(kind,)))


def test_rejects_wrong_color_and_shape():
    s = one("single")
    (color, shape), = parse_caption(s.caption).objects
    assert judge(s.image, s.caption).ok
    for c in synth.COLORS:
        for sh in synth.SHAPES:
            if (c, sh) != (color, shape):
                assert not judge(s.image, f"{synth.article(c)} {c} {sh}").ok, (s.caption, c, sh)


def test_rejects_wrong_background():
    s = one("single")
    for bg in synth.BACKGROUNDS:
        caption = s.caption.split(" on ")[0] + f" on {synth.article(bg)} {bg} background"
        v = judge(s.image, caption)
        assert v.ok == (bg == s.record["background"]), (caption, v.reason)


def test_rejects_wrong_count():
    for seed in range(SEED, SEED + 6):
        s = one("count", seed)
        exp = parse_caption(s.caption)
        (c, sh), n = exp.objects[0], len(exp.objects)
        assert judge(s.image, s.caption).ok
        other = {2: "three", 3: "two"}[n]
        v = judge(s.image, f"{other} {c} {sh}s")
        assert not v.ok and f"expected {synth.NUMBERS[other]} {c} {sh}s" in v.reason, v.reason
        assert not judge(s.image, f"{synth.article(c)} {c} {sh}").ok


def test_rejects_extra_object():
    s = one("single")
    img = s.image.copy()
    (color, shape), = parse_caption(s.caption).objects
    x0, y0, x1, y1 = s.record["objects"][0]["bbox"]
    other = next(c for c in synth.COLORS if c != color)
    # a 14-px square in the emptiest corner
    cx, cy = synth.box_center((x0, y0, x1, y1))
    corner = max([(0, 0), (50, 0), (0, 50), (50, 50)], key=lambda p: abs(p[0] + 7 - cx) + abs(p[1] + 7 - cy))
    ImageDraw.Draw(img).rectangle([corner[0], corner[1], corner[0] + 13, corner[1] + 13], fill=synth.COLORS[other])
    v = judge(img, s.caption)
    assert not v.ok and "found" in v.reason, v.reason


def test_rejects_swapped_relation():
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    for seed in range(SEED, SEED + 8):
        s = one("relation", seed)
        exp = parse_caption(s.caption)
        assert judge(s.image, s.caption).ok
        swapped = s.caption.replace(exp.relation, opposite[exp.relation])
        v = judge(s.image, swapped)
        assert not v.ok and "is not" in v.reason, (swapped, v.reason)
        a, b = (f"{synth.article(c)} {c} {sh}" for c, sh in exp.objects)
        assert not judge(s.image, f"{b} {exp.relation} {a}").ok


def test_rejects_wrong_word_and_color():
    def letters_shared(a, b):
        return sum(x == y for x, y in zip(a, b))

    for seed in range(SEED, SEED + 6):
        s = one("text", seed)
        word, color = s.record["word"], parse_caption(s.caption).text_color
        v = judge(s.image, s.caption)
        assert v.ok and v.ocr == word, v.reason
        # the nearest other word of the same length: one or two letters off
        near = max((w for w in synth.words() if len(w) == len(word) and w != word),
                   key=lambda w: letters_shared(w, word))
        v = judge(s.image, s.caption.replace(f'"{word}"', f'"{near}"'))
        assert not v.ok and "ocr read" in v.reason, (near, v.reason)
        other = next(c for c in synth.COLORS if c != color)
        v = judge(s.image, f'the word "{word}" in {other}')
        assert not v.ok and f"expected {other} text" in v.reason


def test_rejects_blank_and_objects_for_text():
    blank = Image.new("RGB", (64, 64), synth.BACKGROUNDS["white"])
    assert not judge(blank, 'the word "CAT" in red').ok
    assert not judge(blank, "a red circle").ok
    s = one("single")
    (color, _), = parse_caption(s.caption).objects
    assert not judge(s.image, f'the word "CAT" in {color}').ok


def test_missing_tesseract_is_one_clear_error():
    cfg = JudgeConfig(tesseract="no-such-tesseract-binary")
    s = one("text")
    with pytest.raises(UserError, match=r"^tesseract not found: install tesseract-ocr \(make install does\)$"):
        judge(s.image, s.caption, cfg)
    assert judge(one("single").image, one("single").caption, cfg).ok  # objects need no OCR
    assert judge(s.image, s.caption, JudgeConfig(ocr=False, tesseract="no-such-tesseract-binary")).ok


@pytest.mark.parametrize("caption", ["a red circle", "three blue squares", 'the word "CAT" in green',
                                     "a red circle above a blue square"])
def test_odd_images_do_not_crash(caption):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), np.zeros((64, 64, 3), np.uint8),
              np.broadcast_to(np.uint8(synth.COLORS["green"]), (48, 80, 3)), np.zeros((64, 64, 4), np.uint8)]
    line = np.full((64, 64, 3), 245, np.uint8)
    line[30, 5:60] = synth.COLORS["red"]  # a 1-px line: area enough for an object, but no shape
    for img in images + [line, Image.new("L", (64, 64), 128)]:
        v = judge(img, caption)
        assert isinstance(v.ok, bool) and v.kind is not None
    assert not judge(line, "a red square").ok


def test_config_is_a_structured_config():
    conf = OmegaConf.structured(JudgeConfig)
    assert OmegaConf.to_object(OmegaConf.merge(conf, {"workers": 4})) == JudgeConfig(workers=4)


def test_paired_change_counts_and_sign_test():
    before = [True, True, False, False, False, True]
    after = [True, False, True, True, False, True]
    assert paired_change(before, after) == {"gained": 2, "lost": 1, "p": 1.0}  # 3 discordant pairs: 2*(1+3)/8 = 1
    # all 10 discordant pairs go one way: p = 2 / 2^10; swapping the settings swaps gained and lost
    gain = paired_change([False] * 10 + [True] * 5, [True] * 15)
    assert gain == {"gained": 10, "lost": 0, "p": 2 / 1024}
    assert paired_change([True] * 15, [False] * 10 + [True] * 5) == {"gained": 0, "lost": 10, "p": 2 / 1024}
    assert paired_change([True, False], [True, False])["p"] == 1.0  # nothing changed
    with pytest.raises(ValueError):
        paired_change([True], [True, False])


def test_graded_score_is_one_exactly_when_accepted(fresh):
    samples, verdicts = fresh
    perm = np.random.default_rng(SEED + 1).permutation(len(samples))
    shuffled = list(judge_many(((s.image, samples[j].caption) for s, j in zip(samples, perm)), CFG))
    pairs = list(zip(verdicts, [s.caption for s in samples])) + list(zip(shuffled, [samples[j].caption for j in perm]))
    assert any(not v.ok for v, _ in pairs) and any(v.ok for v, _ in pairs)
    for v, caption in pairs:
        assert (score(v, caption) == 1.0) == v.ok, (caption, v.reason)
        assert 0 <= score(v, caption) <= 1
    assert score(judge(samples[0].image, "a cat"), "a cat") == 0.0


def test_graded_score_gives_partial_credit():
    for seed in range(SEED, SEED + 40):
        s = one("count", seed)
        if len(s.record["objects"]) == 3:
            break
    c, sh = s.record["objects"][0]["color"], s.record["objects"][0]["shape"]
    # two of three asked objects found, one extra: found 1, colour 1, extras 1/2, count 1 - 1/2
    assert score(judge(s.image, f"two {c} {sh}s"), f"two {c} {sh}s") == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
    t = one("text", SEED)
    word, ink = t.record["word"], parse_caption(t.caption).text_color
    other = next(c for c in synth.COLORS if c != ink)
    wrong_colour = f'the word "{word}" in {other}'
    assert score(judge(t.image, wrong_colour), wrong_colour) == 0.0  # neither the ink nor (so) the word
    near = f'the word "{word[:-1]}{"Q" if word[-1] != "Q" else "X"}" in {ink}'
    v = judge(t.image, near)
    assert not v.ok and score(v, near) == pytest.approx((1 + 1 - 1 / len(word)) / 2)
