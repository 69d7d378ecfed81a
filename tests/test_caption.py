"""The caption-aware decoder (tokenizer.caption=decoder): the null caption, zero-initialised parity with the
decoder it starts from, older tokenizers unchanged, the caption's path through detokenize / pretokenize /
sampling, resume, and bad captions."""

import io
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from arlm import checkpoint
from arlm.config import TokenizerConfig
from arlm.data.shards import SkipCounter, expand, raw_samples, read_shards
from arlm.errors import ConfigError, UserError
from arlm.generation.judged import Judged, decode_and_judge
from arlm.tokenizer.caption import GLYPH, NULL, PAD, caption_batch, caption_bytes, glyph_bitmaps, quoted_spans
from arlm.tokenizer.codec import load_tokenizer
from arlm.tokenizer.model import Tokenizer
from arlm.training.tokenizer import train
from conftest import tiny_cfg

CAPTION = ["decoder_only=true", "tokenizer.caption=decoder", "tokenizer.caption_dim=16", "tokenizer.caption_heads=2",
           "tokenizer.caption_len=64", "tokenizer.caption_blocks=1", "tokenizer.caption_glyphs=true",
           "data.crop_size=null"]


def _images(synth_dir, n=4):
    samples = [s for s, _ in zip(read_shards(str(synth_dir)), range(n))]
    images = torch.stack([torch.from_numpy(np.asarray(s.image).copy()).permute(2, 0, 1) for s in samples])
    return images, [s.caption for s in samples]


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory, synth_dir, tiny_run):
    """A caption-aware decoder trained for 3 steps at a high lr on the tiny tokenizer's frozen codes."""
    tmp = tmp_path_factory.mktemp("cap")
    return train(tiny_cfg(tmp, synth_dir, f"init_from={tiny_run}", *CAPTION, "trainer.max_steps=3", "trainer.lr=1e-2"))


def test_caption_bytes_and_batches():
    ids, mask = caption_batch(['the word "CAT"', None, ""], max_len=8)
    assert ids.shape == (3, 9) and (ids[:, 0] == NULL).all()
    assert bytes(ids[0, 1:].tolist()) == b'the word'  # cut to max_len bytes
    assert mask[0].all() and mask[1].tolist() == [True] + [False] * 8 and (ids[1:, 1:] == PAD).all()
    assert torch.equal(ids[1], ids[2])  # None and "" are the one null caption
    assert caption_bytes("é", 4) == "é".encode()  # bytes, not characters
    with pytest.raises(UserError, match="UTF-8"):
        caption_bytes("bad \ud800", 16)


def test_glyphs_and_quoted_spans():
    bitmaps = glyph_bitmaps()
    assert bitmaps.shape == (258, GLYPH * GLYPH) and bitmaps.min() >= 0 and bitmaps.max() <= 1
    assert bitmaps[ord("A")].sum() > 0 and bitmaps[ord(" ")].sum() == 0 and bitmaps[NULL].sum() == 0
    assert not torch.equal(bitmaps[ord("O")], bitmaps[ord("Q")])
    ids, _ = caption_batch(['the word "CAT" in red', "a red circle", 'say "" and "HI'], 96)
    spans = quoted_spans(ids)
    inside = spans[..., 0].bool()
    assert inside[0].nonzero().flatten().tolist() == [11, 12, 13]  # C, A, T after NULL and 'the word "'
    assert torch.allclose(spans[0, 11:14, 1], torch.full((3,), 3 / 8))
    assert torch.allclose(spans[0, 12, 2], torch.tensor(1.0))  # the middle letter: sin(pi / 2)
    assert not inside[1].any() and not inside[2].any()  # no quotes; an empty pair and an unclosed one
    assert not torch.equal(spans[0, 11], spans[0, 13])  # the first and last letters: mirrored places differ


def test_the_caption_reader_starts_as_the_identity_and_learns(tmp_path, synth_dir, tiny_run, caption_run):
    images, captions = _images(synth_dir)
    old = load_tokenizer(tiny_run, "cpu")
    codes = old.encode(images)
    # at lr 0 the reader's output projections stay zero: the decoder of tiny_run, whatever the caption
    still = load_tokenizer(train(tiny_cfg(tmp_path, synth_dir, f"init_from={tiny_run}", *CAPTION, "trainer.max_steps=1",
                                          "trainer.lr=0", name="still")), "cpu")
    assert still.reads_captions and torch.equal(still.encode(images), codes)
    assert torch.allclose(still.decode(codes, captions).float(), old.decode(codes).float(), atol=1)  # uint8
    # trained: the same tokens, encoder and codebook kept; captions change the images
    new = load_tokenizer(caption_run, "cpu")
    assert torch.equal(new.encode(images), codes)
    src, got = checkpoint.load_weights(checkpoint.latest(tiny_run)), checkpoint.load_weights(checkpoint.latest(caption_run))
    assert all(torch.equal(src[k], got[k]) for k in src if not k.startswith("decoder."))
    assert all(got[k].abs().sum() > 0 for k in got if k.startswith("decoder.caption.attn.") and ".proj." in k)
    swapped = captions[1:] + captions[:1]
    assert (new.decode(codes, captions).float() - new.decode(codes, swapped).float()).abs().max() > 0
    # the null caption: None, [None] * n and [""] * n are one image each
    null = new.decode(codes)
    assert torch.equal(new.decode(codes, [None] * len(codes)), null) and torch.equal(new.decode(codes, [""] * len(codes)), null)
    with pytest.raises(ValueError, match="captions for"):
        new.decode(codes, captions[:2])


def test_a_tokenizer_without_a_caption_reader_ignores_captions(synth_dir, tiny_run):
    images, captions = _images(synth_dir)
    old = load_tokenizer(tiny_run, "cpu")
    codes = old.encode(images)
    assert not old.reads_captions and torch.equal(old.decode(codes, captions), old.decode(codes))
    assert not any(k.startswith("decoder.caption") for k in old.model.state_dict())  # the keys of before


def test_detokenize_reads_the_caption_field_or_the_option(run_cli, tmp_path, synth_dir, caption_run, monkeypatch):
    images, captions = _images(synth_dir, 3)
    tok = load_tokenizer(caption_run, "cpu")
    codes = tok.encode(images)
    lines = [{"tokens": codes[0].tolist(), "caption": captions[0]}, {"tokens": codes[1].tolist()},
             {"tokens": codes[2].tolist(), "caption": None}]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(json.dumps(ln) + "\n" for ln in lines)))
    code, out, err = run_cli("detokenize", "--tokenizer", caption_run, "--out", tmp_path / "a")
    assert code == 0, err
    got = [np.asarray(Image.open(p)) for p in out.split()]
    want = [tok.decode(codes[:1], [captions[0]])[0], tok.decode(codes[1:2])[0], tok.decode(codes[2:3])[0]]
    assert all(np.array_equal(g, w.permute(1, 2, 0).numpy()) for g, w in zip(got, want))
    # --caption draws every grid with it, whatever the lines say
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(json.dumps(ln) + "\n" for ln in lines)))
    code, out, err = run_cli("detokenize", "--tokenizer", caption_run, "--out", tmp_path / "b", "--caption", captions[1])
    assert code == 0, err
    want = tok.decode(codes, [captions[1]] * 3)
    assert all(np.array_equal(np.asarray(Image.open(p)), w.permute(1, 2, 0).numpy())
               for p, w in zip(out.split(), want))


def test_bad_captions_are_one_line_errors_and_the_rest_goes_on(run_cli, tmp_path, synth_dir, caption_run, monkeypatch):
    images, captions = _images(synth_dir, 1)
    grid = load_tokenizer(caption_run, "cpu").encode(images)[0].tolist()
    lines = [json.dumps({"tokens": grid, "caption": "x" * 65}),  # over caption_len=64 bytes
             json.dumps({"tokens": grid, "caption": 7}),
             '{"tokens": ' + json.dumps(grid) + ', "caption": "bad \\ud800"}',  # a lone surrogate: no UTF-8 form
             json.dumps({"tokens": grid, "caption": captions[0]})]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    code, out, err = run_cli("detokenize", "--tokenizer", caption_run, "--out", tmp_path / "png")
    errs = err.strip().splitlines()
    assert code == 1 and len(out.split()) == 1 and out.split()[0].endswith("000003.png")
    assert len(errs) == 4 and "3 input(s) failed" in errs[3] and "64" in errs[0] and "string" in errs[1] and "UTF-8" in errs[2]


def test_samples_and_pretokenize_carry_the_caption(run_cli, tmp_path, synth_dir, tiny_run, caption_run):
    images, captions = _images(synth_dir)
    tok = load_tokenizer(caption_run, "cpu")
    codes = tok.encode(images)
    judged = decode_and_judge([Judged(p, 0, c) for p, c in zip(captions, codes)], tok)  # the sampler's decode path
    for j, c, p in zip(judged, codes, captions):
        assert np.array_equal(np.asarray(j.image), tok.decode(c[None], [p])[0].permute(1, 2, 0).numpy())
    # pretokenize: the tokens are those of the tokenizer it was trained from, each beside its caption
    outs = []
    for name, run in (("old", tiny_run), ("cap", caption_run)):
        code, _, err = run_cli("pretokenize", str(synth_dir), "--tokenizer", run, "--out", tmp_path / name, "--size", "32")
        assert code == 0, err
        outs.append([(r["__key__"], r["txt"], np.load(io.BytesIO(r["npy"])))
                     for r in raw_samples(expand(str(tmp_path / name)), SkipCounter())])
    assert len(outs[1]) == 48 and all(a[:2] == b[:2] and np.array_equal(a[2], b[2]) for a, b in zip(*outs))
    assert [t.decode() for _, t, _ in outs[1][:4]] == captions


def test_eval_tokenizer_with_and_without_captions(run_cli, synth_dir, caption_run):
    reports = []
    for flag in ("--captions", "--no-captions"):
        code, out, err = run_cli("eval", "tokenizer", str(synth_dir), "--tokenizer", caption_run, "--size", "32",
                                 "--no-jpeg", "--no-judge", flag)
        assert code == 0, err
        reports.append(json.loads(out))
    assert [r["captions"] for r in reports] == ["read", "withheld"] and reports[0]["psnr"] != reports[1]["psnr"]


def test_resume_continues_the_caption_stage(tmp_path, synth_dir, tiny_run):
    """The captions withheld (loss.caption_dropout) come from the saved RNG: a resumed run withholds the same."""
    from test_tokenizer import _assert_same_run, _resume_run

    extra = [f"init_from={tiny_run}", *CAPTION, "tokenizer.loss.caption_dropout=0.5", "trainer.lr=1e-2"]
    _assert_same_run(*_resume_run(tmp_path, synth_dir, extra), ["model"])


def test_bad_caption_configs(tmp_path, synth_dir, tiny_run):
    base = dict(downsample=4, channels=16, channel_mult=[1, 2, 2], codebook_size=64)
    with pytest.raises(ConfigError, match="tokenizer.caption must"):
        Tokenizer(TokenizerConfig(**base, caption="both"))
    with pytest.raises(ConfigError, match="caption_heads"):
        Tokenizer(TokenizerConfig(**base, caption="decoder", caption_dim=16, caption_heads=3))
    with pytest.raises(ConfigError, match="caption_dim"):
        Tokenizer(TokenizerConfig(**base, caption="decoder", caption_len=0))
    with pytest.raises(ConfigError, match="whole images"):
        train(tiny_cfg(tmp_path, synth_dir, f"init_from={tiny_run}", *CAPTION[:-1], "data.crop_size=16", name="crop"))
    with pytest.raises(ConfigError, match="caption_dropout"):
        train(tiny_cfg(tmp_path, synth_dir, f"init_from={tiny_run}", *CAPTION, "tokenizer.loss.caption_dropout=1.5",
                       name="drop"))
    assert not any((tmp_path / "crop").glob("*")) and not any((tmp_path / "drop").glob("*"))  # nothing written
