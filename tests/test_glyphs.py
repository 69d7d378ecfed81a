"""The glyph reader (judge.reader=glyphs): it reads every word of the synthetic font itself, tells a word from
its near misses, never reads ink that is no word as the word asked, leaves what it cannot tell to tesseract,
and no evaluation may use it. Its agreement with tesseract on a model's samples: scripts/reader_agreement.py
(docs/results.md)."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from arlm import synth
from arlm.config import EvalImagesConfig, JudgeConfig
from arlm.errors import ConfigError
from arlm.evaluation import eval_images
from arlm.glyphs import read_word
from arlm.judge import judge

GLYPHS = JudgeConfig(reader="glyphs")


def drawn(word: str, h: int = 64, w: int = 64) -> np.ndarray:
    """The word's ink as the synthetic set draws it, as a [0, 1] mask."""
    canvas = Image.new("L", (w, h), 0)
    synth.draw_word(ImageDraw.Draw(canvas), word, h, w, 255)
    return np.asarray(canvas, dtype=np.float32) / 255


def test_every_synthetic_word_image_is_read_as_its_word():
    samples = list(synth.generate(150, (64, 64), seed=7, kinds=("text",)))
    verdicts = [judge(s.image, s.caption, GLYPHS) for s in samples]
    assert all(v.ok for v in verdicts), [v.reason for v in verdicts if not v.ok][:5]


def test_the_font_alone_reads_every_word_of_the_set():
    unread = [w for w in synth.words() if read_word(drawn(w), w) != w]
    assert not unread


def test_what_the_font_cannot_tell_is_read_by_tesseract(monkeypatch):
    samples = list(synth.generate(12, (64, 64), seed=3, kinds=("text",)))
    full = [judge(s.image, s.caption) for s in samples]
    monkeypatch.setattr("arlm.judge.glyphs.read_word", lambda alpha, word: None)
    deferred = [judge(s.image, s.caption, GLYPHS) for s in samples]
    assert [(v.ok, v.ocr) for v in deferred] == [(v.ok, v.ocr) for v in full]


@pytest.mark.parametrize("shown,asked", [("CAT", "CAB"), ("MOON", "MOAN"), ("BOTTLE", "BATTLE"), ("SHIP", "SHOP")])
def test_a_near_miss_is_read_as_what_is_shown(shown, asked):
    read = read_word(drawn(shown), asked)
    assert read == shown and read != asked


def test_ink_that_is_no_word_is_not_read_as_the_word_asked():
    rng = np.random.default_rng(0)
    assert read_word(np.zeros((64, 64), np.float32), "CAT") == ""
    assert read_word(rng.random((64, 64)).astype(np.float32), "CAT") == ""
    blob = np.zeros((64, 64), np.float32)
    blob[20:44, 12:52] = 1.0  # a bar of ink where a word would be
    assert read_word(blob, "CAT") != "CAT"
    assert read_word(drawn("CAT")[:, ::-1].copy(), "CAT") != "CAT"  # the word mirrored


def test_a_wider_image_is_read_too():
    assert read_word(drawn("BANANA", 64, 128), "BANANA") == "BANANA"


def test_evaluations_keep_the_full_judge(tmp_path):
    with pytest.raises(ConfigError, match="judge.reader"):
        eval_images(str(tmp_path), EvalImagesConfig(judge=GLYPHS))
    with pytest.raises(ConfigError, match="judge.reader"):
        judge(Image.new("RGB", (64, 64)), "a red circle", JudgeConfig(reader="easyocr"))
