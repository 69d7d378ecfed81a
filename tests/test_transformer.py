"""The transformer: sequence layout, model invariants, token data, pretrain/sft end to end, resume,
checkpoints, bad inputs, and 1-process vs 2-process (DDP, FSDP2) loss parity under torchrun."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from arlm import checkpoint
from arlm.judge import parse_caption
from arlm.config import ModelConfig, TokenDataConfig, compose, to_object
from arlm.errors import ConfigError
from arlm.transformer.data import Batches, token_info
from arlm.transformer.model import KVCache, Transformer, rope_angles
from arlm.transformer.ckpt import load_model
from arlm.transformer.sample import Settings, sample
from arlm.transformer.sequence import PAD_R, TEXT_R, VISUAL_R, Vocab, positions, top_words
from arlm.training.common import lr_at
from arlm.training.transformer import train
from arlm.transformer.ckpt import read_vocab

SFT_TINY = ["trainer=tiny", "trainer.compile=false", "data.batch_size=8", "sample.n=1", "sample.prompts=[a red circle]"]
TINY = ["model=tiny", *SFT_TINY]  # sft has no model group: it takes the pretrain run's model


def cfg_of(stage, token_dir, run, *extra):
    return to_object(compose(stage, [*(TINY if stage == "pretrain" else SFT_TINY), f"data.shards={token_dir}",
                                     f"run_dir={run}", *extra]))


def rows(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def loss_rows(run):
    return [r for r in rows(run) if "loss" in r]


# --- sequence ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("caption,h,w", [("a red circle", 4, 4), ("", 2, 5), ("ünïcødé 文字 ✓", 3, 1)])
def test_sequence_round_trip(caption, h, w):
    vocab = Vocab(codebook_size=50)
    grid = torch.randint(0, 50, (h, w))
    seq = vocab.sequence(caption, grid)
    assert len(seq) == vocab.seq_len(len(caption.encode()), h, w)
    back_caption, back_grid = vocab.parse(seq + [vocab.pad] * 3)
    assert back_caption == caption and torch.equal(back_grid, grid)
    assert vocab.sequence(back_caption, back_grid) == seq
    assert max(seq) < vocab.size <= vocab.padded_size and vocab.padded_size % 64 == 0


@pytest.mark.parametrize("caption", ["a red circle left of an orange square on a gray background",
                                     'the word "CAT" in red', "A redundant ünïcødé  caption\n", ""])
def test_word_pieces_are_lossless_and_spell_what_they_do_not_know(caption):
    words = top_words(["a red circle", "an orange square", "two red squares", 'the word "CAT" in red'] * 2, 64)
    assert " red" in words and "CAT" not in " ".join(words) and words == tuple(sorted(set(words), key=words.index))
    vocab = Vocab(codebook_size=50, words=words)
    ids = vocab.encode_text(caption)
    assert vocab.decode_text(ids) == caption
    assert len(ids) <= len(caption.encode())
    grid = torch.randint(0, 50, (3, 2))
    assert vocab.parse(vocab.sequence(caption, grid))[0] == caption
    assert Vocab.from_json(vocab.to_json()) == vocab and not vocab.compatible(Vocab(codebook_size=50))
    if caption.startswith("the word"):  # the word to draw stays letters: one byte id per capital
        assert [i for i in ids if i < 256 and chr(i).isupper()] == [ord(c) for c in "CAT"]
    assert max(ids, default=0) < vocab.size <= vocab.padded_size


def test_a_word_vocabulary_trains_and_its_batches_are_its_sequences(tmp_path, token_dir):
    run = train(cfg_of("pretrain", token_dir, tmp_path / "w", "data.words=16", "trainer.image_every=100"))
    vocab = read_vocab(checkpoint.resolve(run, "transformer"))
    assert len(vocab.words) == 16 and {" red", " circle"} & set(vocab.words)
    info = token_info(str(token_dir))
    cfg = TokenDataConfig(shards=str(token_dir), batch_size=8, caption_dropout=0.0)
    memory = Batches(cfg, vocab, info, 192, torch.device("cpu")).batch(0)[0][0]
    bytes_only = Batches(cfg, Vocab(info.codebook_size), info, 192, torch.device("cpu")).batch(0)[0][0]
    assert memory.shape[1] < bytes_only.shape[1]  # shorter sequences
    for a, b in zip(memory.tolist(), bytes_only.tolist()):
        (ca, ga), (cb, gb) = vocab.parse(a), Vocab(info.codebook_size).parse(b)
        assert ca == cb and torch.equal(ga, gb) and a[:len(vocab.sequence(ca, ga))] == vocab.sequence(ca, ga)
    model, _, _ = load_model(run, "cpu")
    assert tuple(sample(model, vocab, ["two red circles"] * 2, [0, 1], *info.grid).shape) == (2, *info.grid)


def test_parse_refuses_what_is_not_a_sequence():
    vocab = Vocab(codebook_size=50)
    seq = vocab.sequence("ab", torch.zeros(2, 2, dtype=torch.long))
    for bad in (seq[1:], seq[:-1], seq[:5] + [0] + seq[6:], [vocab.bos, 300, vocab.sov] + seq[3:]):
        with pytest.raises(ValueError):
            vocab.parse(bad)


def test_batch_build_equals_one_sequence_at_a_time():
    vocab = Vocab(codebook_size=30)
    caps = ["a", "three blue squares", ""]
    h, w = 2, 3
    codes = torch.randint(0, 30, (3, h * w))
    L = max(len(c) for c in caps)
    text = torch.zeros(3, L, dtype=torch.uint8)
    for i, c in enumerate(caps):
        text[i, :len(c)] = torch.tensor(list(c.encode()), dtype=torch.uint8)
    T = vocab.seq_len(L, h, w) + 2
    tokens, pos, region = vocab.build(text, torch.tensor([len(c) for c in caps]), codes, h, w, T)
    for i, c in enumerate(caps):
        seq = vocab.sequence(c, codes[i].view(h, w))
        assert tokens[i].tolist() == seq + [vocab.pad] * (T - len(seq))
        assert (region[i, len(seq):] == PAD_R).all() and (region[i] == VISUAL_R).sum() == h * w
        assert (region[i, :len(c) + 5] == TEXT_R).all()
        v0 = len(c) + 5  # 2d rope: visual (r, c) at (v0 + r, v0 + c); text at (t, t)
        assert pos[i, v0 + w + 1].tolist() == [v0 + 1, v0 + 1]
        assert pos[i, 1].tolist() == [1, 1]


# --- model ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [{}, {"rope": "1d", "qk_norm": True, "tie_embeddings": False, "n_kv_heads": 2},
                                   {"mlp": "relu2", "logit_softcap": 2.0, "embed_skip": True}])
def test_model_is_causal_and_the_cache_equals_recomputation(extra):
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64, **extra)
    model = Transformer(cfg, 128).eval()
    for block in model.blocks if cfg.embed_skip else ():  # as training leaves them: the embedding mixed in
        block.skip.data = torch.tensor([0.7, 0.4])
    B, T = 2, 20
    tokens = torch.randint(0, 128, (B, T))
    pos = positions(torch.arange(T).expand(B, T), torch.tensor([[6], [6]]), 3, 4, 12)
    full = model(tokens, pos)
    changed = tokens.clone()
    changed[:, 15] = (changed[:, 15] + 1) % 128
    assert torch.equal(model(changed, pos)[:, :15], full[:, :15])  # the future never leaks back
    cache = KVCache(cfg, B, T, "cpu", torch.float32)
    steps = [model(tokens[:, :8], pos[:, :8], cache)]  # prefill, then one token at a time, then a block of 3
    for t in range(8, 17):
        steps.append(model(tokens[:, t:t + 1], pos[:, t:t + 1], cache))
    steps.append(model(tokens[:, 17:], pos[:, 17:], cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_the_speedrun_options_keep_their_promises():
    """zero_init: the blocks add nothing at first (the logits are the embedding's); logit_softcap bounds the
    logits; relu2 has one up-projection of 4 * dim (SwiGLU's parameter count at 8/3 * dim, two of them)."""
    torch.manual_seed(0)
    tokens, pos = torch.randint(0, 128, (2, 10)), torch.zeros(2, 10, 2, dtype=torch.long)
    zero = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64, zero_init=True), 128)
    x = zero.norm(zero.embed(tokens))
    torch.testing.assert_close(zero(tokens, pos), x @ zero.head.weight.T)
    capped = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64, logit_softcap=0.5, init_std=1.0), 128)
    out = capped(tokens, pos)
    assert out.abs().max() <= 0.5 and out.abs().max() > 0.4  # large logits squashed to the cap
    relu2 = Transformer(ModelConfig(dim=48, n_layers=1, n_heads=4, mlp="relu2"), 128).blocks[0].mlp
    assert relu2.w1.weight.shape == (192, 48) and relu2.w2.weight.shape == (48, 192)
    with pytest.raises(ValueError, match="model.mlp"):
        Transformer(ModelConfig(dim=32, n_layers=1, n_heads=4, mlp="gelu"), 128)


def test_loss_goes_down_on_a_fixed_batch():
    from arlm.transformer.objectives import token_loss

    torch.manual_seed(0)
    vocab = Vocab(codebook_size=16)
    model = Transformer(ModelConfig(dim=48, n_layers=2, n_heads=4, max_seq_len=64), vocab.padded_size)
    seqs = [vocab.sequence(f"word {i}", torch.randint(0, 16, (4, 4))) for i in range(4)]
    tokens = torch.tensor(seqs)
    pos = positions(torch.arange(tokens.shape[1]).expand(4, -1), torch.full((4, 1), 11), 4, 4, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        obj, stats = token_loss(model(tokens[:, :-1], pos[:, :-1]), tokens[:, 1:], torch.ones(4, tokens.shape[1] - 1),
                                torch.full((4, tokens.shape[1] - 1), VISUAL_R), 1e-4)
        (obj / stats[1]).backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(stats[0] / stats[1]))
    assert losses[-1] < 0.2 * losses[0]


def _token_batch(vocab, caps, h, w, seed=0):
    torch.manual_seed(seed)
    codes = torch.randint(0, vocab.codebook_size, (len(caps), h * w))
    L = max(len(c) for c in caps)
    text = torch.zeros(len(caps), L, dtype=torch.uint8)
    for i, c in enumerate(caps):
        text[i, :len(c)] = torch.tensor(list(c.encode()), dtype=torch.uint8)
    return vocab.build(text, torch.tensor([len(c) for c in caps]), codes, h, w, vocab.seq_len(L, h, w) + 1)


def test_next_patch_at_one_is_next_token_and_at_two_predicts_each_next_group():
    from arlm.config import TrainTransformerConfig
    from arlm.transformer.objectives import NextPatch, NextToken

    vocab, (h, w) = Vocab(codebook_size=16), (4, 6)
    micro = _token_batch(vocab, ["a red circle", "x", ""], h, w)
    tokens, pos, region = micro
    model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, max_seq_len=64), vocab.padded_size)
    cfg = TrainTransformerConfig()
    cfg.loss.z_loss = 1e-3
    plain, stats = NextToken(cfg, torch.device("cpu"))(model, micro)
    one = NextPatch(cfg, torch.device("cpu"), (h, w))  # patch 1: the same loss, statistics and normaliser
    got, got_stats = one(model, micro)
    torch.testing.assert_close(got, plain)
    torch.testing.assert_close(got_stats, stats)
    assert one.norm(micro) == NextToken(cfg, torch.device("cpu")).norm(micro)
    cfg.loss.patch = 2
    two = NextPatch(cfg, torch.device("cpu"), (h, w))
    obj, stats = two(model, micro)
    # by hand: per sequence, positions = the text/layout tokens, the 2x2 groups in raster order, the end tokens;
    # a position's input is its tokens' mean embedding, its loss the mean cross-entropy of the next position's
    weights = two.weights
    want_obj, want_norm = torch.zeros(()), torch.zeros(())
    for i in range(tokens.shape[0]):
        v0 = int((region[i] == VISUAL_R).int().argmax())
        items = [[t] for t in range(v0)]
        items += [[v0 + (gi * 2 + a) * w + gj * 2 + b for a in (0, 1) for b in (0, 1)]
                  for gi in range(h // 2) for gj in range(w // 2)]
        items += [[t] for t in range(v0 + h * w, tokens.shape[1])]
        x = torch.stack([model.embed.weight[tokens[i, ix]].mean(0) for ix in items])
        p = torch.stack([pos[i, ix].float().mean(0) for ix in items])
        cos, sin = rope_angles(p[None], 8, model.cfg.rope_theta, True)
        for block in model.blocks:
            x = block(x[None] if x.dim() == 2 else x, cos, sin)
        logits = model.head(model.norm(x))[0]
        for t in range(len(items) - 1):
            nxt = items[t + 1]
            lse = logits[t].logsumexp(-1)
            for k in nxt:
                wk = weights[region[i, k]] / len(nxt)
                want_obj = want_obj + wk * (lse - logits[t, tokens[i, k]])
                want_norm = want_norm + wk
            if weights[region[i, nxt]].sum() > 0:
                want_obj = want_obj + 1e-3 * lse ** 2
    torch.testing.assert_close(obj, want_obj, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(two.norm(micro), want_norm)
    assert float(stats[3]) == tokens.shape[0] * h * w / 4  # each group's tokens count as one position
    with pytest.raises(ConfigError, match="divide the token grid"):
        cfg.loss.patch = 4
        NextPatch(cfg, torch.device("cpu"), (h, w))


def test_sampler_emits_whole_grids_reproducibly():
    torch.manual_seed(0)
    vocab = Vocab(codebook_size=20)
    model = Transformer(ModelConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=64), vocab.padded_size)
    a = sample(model, vocab, ["a red circle"] * 2, [3, 4], 3, 5)
    assert a.shape == (2, 3, 5) and a.min() >= 0 and a.max() < 20
    assert torch.equal(a, sample(model, vocab, ["a red circle"] * 2, [3, 4], 3, 5))
    greedy = Settings(temperature=0)
    assert torch.equal(sample(model, vocab, ["x"], [0], 2, 2, greedy), sample(model, vocab, ["x"], [1], 2, 2, greedy))


# --- token data -----------------------------------------------------------------------------------------

def test_ranks_split_the_global_batch_of_one_process(token_dir):
    info = token_info(str(token_dir))
    vocab = Vocab(info.codebook_size, info.tokenizer)
    cfg = TokenDataConfig(shards=str(token_dir), batch_size=8, caption_dropout=0.5)
    one = Batches(cfg, vocab, info, 192, torch.device("cpu"))
    parts = [Batches(cfg, vocab, info, 192, torch.device("cpu"), rank=r, world=2, accum=2) for r in range(2)]
    for step in (0, 1, 7):  # 48 samples, 6 steps per epoch: step 7 is in the second epoch
        whole = one.batch(step)[0][0]
        split = torch.cat([m[0] for p in parts for m in p.batch(step)])
        assert torch.equal(whole, split)
        for seq in whole.tolist():
            caption, grid = vocab.parse(seq)
            assert grid.shape == tuple(info.grid)
    assert not torch.equal(one.batch(0)[0][0], one.batch(1)[0][0])
    dropped = sum(vocab.parse(s)[0] == "" for step in range(6) for s in one.batch(step)[0][0].tolist())
    assert 8 <= dropped <= 40  # about half of 48


def test_kind_weights_draw_each_kind_as_often_as_asked(token_dir):
    """data.kind_weights: a draw per step, a pure function of the step (resume) split across ranks as one
    process draws it; a kind of weight 0 never comes, one of weight 3 three times as often per sample."""
    info = token_info(str(token_dir))
    vocab = Vocab(info.codebook_size, info.tokenizer)
    weights = {"single": 1.0, "count": 0.0, "relation": 1.0, "text": 3.0}
    cfg = TokenDataConfig(shards=str(token_dir), batch_size=8, caption_dropout=0.0, kind_weights=weights)
    one = Batches(cfg, vocab, info, 192, torch.device("cpu"))
    parts = [Batches(cfg, vocab, info, 192, torch.device("cpu"), rank=r, world=2) for r in range(2)]
    assert torch.equal(one.batch(5)[0][0], torch.cat([p.batch(5)[0][0] for p in parts]))
    assert torch.equal(one.batch(5)[0][0], Batches(cfg, vocab, info, 192, torch.device("cpu")).batch(5)[0][0])
    drawn = [one.kinds[i] for step in range(400) for i in one._indices(step).tolist()]
    have = {k: one.kinds.count(k) for k in weights}
    assert "count" not in drawn and have["text"] and have["single"]
    per_sample = {k: drawn.count(k) / have[k] for k in ("single", "text")}
    assert per_sample["text"] / per_sample["single"] == pytest.approx(3.0, rel=0.25)  # 3,200 draws
    with pytest.raises(ConfigError, match="kind_weights"):
        Batches(dataclasses.replace(cfg, mode="stream"), vocab, info, 192, torch.device("cpu"))
    with pytest.raises(ConfigError, match="kind_weights"):
        Batches(dataclasses.replace(cfg, kind_weights={k: 0.0 for k in weights}), vocab, info, 192,
                torch.device("cpu"))


def test_stream_mode_and_filters(token_dir):
    info = token_info(str(token_dir))
    vocab = Vocab(info.codebook_size, info.tokenizer)
    cfg = TokenDataConfig(shards=str(token_dir), batch_size=4, mode="stream", caption_dropout=0.0,
                          kinds=["single"], shuffle_buffer=8)
    stream = Batches(cfg, vocab, info, 192, torch.device("cpu"))
    seen = [vocab.parse(s)[0] for step in range(4) for s in stream.batch(step)[0][0].tolist()]
    assert len(seen) == 16 and all(parse_caption(c).kind == "single" for c in seen)
    again = Batches(cfg, vocab, info, 192, torch.device("cpu"))  # a resumed run starts at its step
    assert torch.equal(again.batch(3)[0][0], stream.batch(3)[0][0])


# --- runs ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory, token_dir):
    run = tmp_path_factory.mktemp("pt") / "run"
    return train(cfg_of("pretrain", token_dir, run, "trainer.image_every=2", "trainer.ema=0.9"))


def test_tiny_pretrain_writes_a_complete_run_dir(pretrain_run, token_dir):
    names = {p.name for p in pretrain_run.iterdir()}
    assert {"config.yaml", "run.json", "metrics.jsonl", "vocab.json", "checkpoints", "images", "loss.png",
            "judge.png"} <= names
    assert sorted(p.name for p in (pretrain_run / "images").iterdir()) == ["samples-0000002.png", "samples-0000004.png"]
    r = loss_rows(pretrain_run)
    assert [x["step"] for x in r] == [1, 2, 3, 4] and all(x["tok_s"] > 0 and 0 < x["mfu"] for x in r)
    judged = [x for x in rows(pretrain_run) if "judge" in x]
    assert [x["step"] for x in judged] == [2, 4] and all(0 <= x["judge"] <= 1 for x in judged)
    ckpt = checkpoint.resolve(pretrain_run, "transformer")
    assert {"model.safetensors", "ema.safetensors", "state.pt", "vocab.json"} <= {p.name for p in ckpt.iterdir()}
    # the checkpoint's vocabulary is the run's; the tokenizer each records (relative to the run) is the data's
    got, recorded = read_vocab(ckpt), Vocab.from_json((pretrain_run / "vocab.json").read_text())
    assert dataclasses.replace(got, tokenizer=None) == dataclasses.replace(recorded, tokenizer=None)
    tokens = json.loads((token_dir / "tokens.json").read_text())["tokenizer"]
    assert Path(got.tokenizer).resolve() == (pretrain_run / recorded.tokenizer).resolve() \
        == (token_dir / tokens).resolve()


def test_sft_starts_from_pretrain_and_learns_visual_tokens_only(tmp_path, token_dir, pretrain_run, run_cli):
    code, out, err = run_cli("sft", *SFT_TINY, f"data.shards={token_dir}", f"run_dir={tmp_path / 'sft'}",
                             f"init_from={pretrain_run}", "model.dim=32", "data.kinds=[single]", "trainer.image_every=100")
    assert code == 0, err
    assert out.strip() == str(tmp_path / "sft")
    stored = checkpoint.load_config(checkpoint.resolve(tmp_path / "sft", "transformer"), type(cfg_of("sft", token_dir, tmp_path)))
    assert stored.model.dim == 64  # the pretrain run's model, whatever the overrides said
    for r in loss_rows(tmp_path / "sft"):
        assert r["loss"] == pytest.approx(r["loss_visual"], rel=1e-5)  # visual tokens only
    first_pre = loss_rows(pretrain_run)[0]["loss_visual"]
    assert loss_rows(tmp_path / "sft")[0]["loss_visual"] < first_pre  # it starts from the trained weights


def test_a_next_patch_phase_then_a_next_token_phase(tmp_path, token_dir, run_cli):
    """loss.patch=2 trains on 2x2 groups of the 8x8 grid; a next-token phase starts from its weights."""
    npp = train(cfg_of("pretrain", token_dir, tmp_path / "npp", "loss.patch=2", "trainer.image_every=2"))
    r = loss_rows(npp)
    assert [x["step"] for x in r] == [1, 2, 3, 4] and all(0 < x["loss_visual"] < 20 for x in r)
    assert not (npp / "images").exists() or not any((npp / "images").iterdir())  # no sampler yet: no grids
    assert not any("judge" in x for x in rows(npp))
    ntp = train(cfg_of("pretrain", token_dir, tmp_path / "ntp", f"init_from={npp}", "trainer.image_every=100"))
    start = checkpoint.load_weights(checkpoint.resolve(npp, "transformer"))
    assert loss_rows(ntp) and start.keys() == checkpoint.load_weights(checkpoint.resolve(ntp, "transformer")).keys()
    code, _, err = run_cli("dpo", f"init_from={npp}", "loss.patch=2", f"run_dir={tmp_path / 'dpo'}")
    errors = [ln for ln in err.splitlines() if ln.startswith("arimg: error:")]
    assert code == 2 and len(errors) == 1 and "loss.patch" in errors[0] and "Traceback" not in err


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_continues_the_same_run(tmp_path, token_dir, optimizer):
    """Muon's momentum buffers, like AdamW's moments, travel in the checkpoint: the resumed run is the same."""
    extra = ["trainer.ckpt_every=2", "trainer.ema=0.9", "trainer.grad_accum=2", "loss.z_loss=1e-4",
             "trainer.image_every=100", f"trainer.optimizer={optimizer}"]
    full = train(cfg_of("pretrain", token_dir, tmp_path / "full", *extra))
    cut = _cut_at_step_2(full, tmp_path / "cut")
    train(cfg_of("pretrain", token_dir, cut, *extra, "resume=true"))
    _assert_same_run(full, cut)


def _cut_at_step_2(full, cut):
    """A copy of a 4-step run with checkpoints at 2 and 4, as if it had been stopped after step 2."""
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "step-0000004")
    (cut / "checkpoints" / "latest").write_text("step-0000002")
    return cut


def _assert_same_run(full, resumed):
    """The resumed run logged the same losses and ended with the same weights, EMA included, bit for bit."""
    a, b = loss_rows(full), loss_rows(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for k in ("tok_s", "mfu", "mem_mib", "elapsed_s"):
            ra.pop(k), rb.pop(k)
        assert ra == rb
    for name in ("model", "ema"):
        wa, wb = (checkpoint.load_weights(checkpoint.latest(r), name) for r in (full, resumed))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_inputs_are_one_line_errors_with_exit_2(tmp_path, token_dir, pretrain_run, tiny_run, run_cli):
    def run(*args):
        code, out, err = run_cli(*args)
        errors = [ln for ln in err.splitlines() if ln.startswith("arimg: error:")]
        assert len(errors) == 1 and "Traceback" not in err and not out, err  # logs may come before it
        return code, errors[0]

    common = [*TINY, f"data.shards={token_dir}"]
    code, err = run("sft", *SFT_TINY, f"data.shards={token_dir}", f"run_dir={tmp_path / 'a'}", f"init_from={tiny_run}")
    assert code == 2 and "'tokenizer' checkpoint" in err
    code, err = run("pretrain", *common, f"run_dir={tmp_path / 'b'}", "model.max_seq_len=40", "sample.prompts=[]")
    assert code == 2 and "sequences of this data set need" in err and "max_seq_len" in err
    code, err = run("pretrain", *common, f"run_dir={tmp_path / 'c'}", f"sample.prompts=[{'x' * 150}]")
    assert code == 2 and "context" in err
    code, err = run("pretrain", *common, f"run_dir={tmp_path / 'd'}", "model.nope=1")
    assert code == 2
    # a data set of another vocabulary: the same tokens, said to come from a 32-code tokenizer
    other = tmp_path / "other"
    shutil.copytree(token_dir, other)
    meta = json.loads((other / "tokens.json").read_text())
    (other / "tokens.json").write_text(json.dumps({**meta, "codebook_size": 4096}))
    code, err = run("sft", *SFT_TINY, f"data.shards={other}", f"run_dir={tmp_path / 'e'}", f"init_from={pretrain_run}")
    assert code == 2 and "vocabulary" in err
    # overwrite=true with an input that fails its checks loses nothing of the old run
    keep = tmp_path / "keep"
    shutil.copytree(pretrain_run, keep)
    code, err = run("pretrain", *common, f"run_dir={keep}", "overwrite=true", f"sample.prompts=[{'x' * 150}]")
    assert code == 2 and checkpoint.latest(keep) is not None and any((keep / "images").iterdir())
    (tmp_path / "f").mkdir()
    code, err = run("sft", *SFT_TINY, f"data.shards={token_dir}", f"run_dir={tmp_path / 'f' / 'run'}",
                    f"init_from={tmp_path / 'f'}")
    assert code == 1 and "checkpoint" in err


def test_sigkill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path, token_dir):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "arimg", "pretrain", *TINY, f"data.shards={token_dir}", f"run_dir={run}",
            "trainer.max_steps=100000", "trainer.ckpt_every=1", "trainer.log_every=1000", "trainer.image_every=100000",
            "model.dim=128", "overwrite=true"]
    for delay in (0.0, 0.1, 0.3):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while checkpoint.latest(run) is None or checkpoint.latest(run).name == "step-0000001":
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.02)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ckpt = checkpoint.resolve(run, "transformer")
        cfg = checkpoint.load_config(ckpt, type(cfg_of("pretrain", token_dir, run)))
        model = Transformer(cfg.model, read_vocab(ckpt).padded_size)
        checkpoint.load_into(model, checkpoint.load_weights(ckpt), ckpt)
        assert checkpoint.load_state(ckpt)["step"] >= 1


# --- several processes ------------------------------------------------------------------------------------

def _torchrun(tmp_path, token_dir, name, nproc, *extra, steps=3, ckpt_every=3):
    run = tmp_path / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "arimg", "pretrain", *TINY, f"data.shards={token_dir}", f"run_dir={run}",
           f"trainer.max_steps={steps}", "trainer.image_every=100", f"trainer.ckpt_every={ckpt_every}",
           "loss.z_loss=1e-4", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(run)  # one line: rank 0 alone prints
    return run


@pytest.mark.parametrize("parallel,optimizer", [("ddp", "adamw"), ("fsdp", "adamw"), ("ddp", "muon"),
                                                ("fsdp", "muon")])
def test_two_processes_give_the_loss_of_one(tmp_path, token_dir, parallel, optimizer):
    """Muon under FSDP2 orthogonalizes the whole matrix gathered from its slices: the same step as one process."""
    opt = f"trainer.optimizer={optimizer}"
    one = train(cfg_of("pretrain", token_dir, tmp_path / "one", "trainer.max_steps=3", "trainer.image_every=100",
                       "trainer.ckpt_every=3", "loss.z_loss=1e-4", "trainer.ema=0.5", opt))
    two = _torchrun(tmp_path, token_dir, "two", 2, f"trainer.parallel={parallel}", "trainer.ema=0.5", opt)
    a, b = loss_rows(one), loss_rows(two)
    assert [r["step"] for r in b] == [1, 2, 3]
    assert b[0]["loss"] == pytest.approx(a[0]["loss"], rel=1e-5)  # the first step: same samples, same weights
    for ra, rb in zip(a, b):  # later steps: the gradients were averaged the same way
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4)
    for name in ("model", "ema"):  # the EMA too: under FSDP each process averages its shard
        wa, wb = (checkpoint.load_weights(checkpoint.latest(r), name) for r in (one, two))
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], atol=1e-4, rtol=1e-3)


def test_fsdp_resume_continues_the_same_run(tmp_path, token_dir):
    extra = ("trainer.parallel=fsdp", "trainer.ema=0.9")
    full = _torchrun(tmp_path, token_dir, "full", 2, *extra, steps=4, ckpt_every=2)
    _cut_at_step_2(full, tmp_path / "cut")
    _torchrun(tmp_path, token_dir, "cut", 2, *extra, "resume=true", steps=4, ckpt_every=2)
    _assert_same_run(full, tmp_path / "cut")


def test_the_held_out_loss_is_the_objective_on_the_held_out_shards(tmp_path, token_dir):
    """trainer.eval_every with data.val_shards: a val_* row at those steps and at the end, and the last one equals
    the objective recomputed on every held-out batch with the weights the run saved at that step."""
    from arlm.transformer.objectives import NextToken

    run = train(cfg_of("pretrain", token_dir, tmp_path / "run", "trainer.eval_every=2", "sample.n=0",
                       f"data.val_shards={token_dir}"))
    held = [r for r in rows(run) if "val_loss" in r]
    assert [r["step"] for r in held] == [2, 4] and all("loss" not in r for r in held)
    model, vocab, cfg = load_model(run, "cpu", ema=False)
    data = dataclasses.replace(cfg.data, caption_dropout=0.0)
    batches = Batches(data, vocab, token_info(str(token_dir)), cfg.model.max_seq_len, torch.device("cpu"))
    loss, sums = NextToken(cfg, torch.device("cpu")), torch.zeros(4)
    with torch.no_grad():
        for step in range(batches.steps_per_epoch):
            for micro in batches.batch(step):
                sums += loss(model, micro)[1]
    want = loss.metrics(sums.tolist())
    assert held[-1]["val_loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert held[-1]["val_loss_visual"] == pytest.approx(want["loss_visual"], rel=1e-5)


def test_a_time_budget_ends_the_run_on_time_with_its_schedule_complete(tmp_path, token_dir):
    """trainer.max_minutes: the schedule follows the clock, max_steps is not read, and the run ends at the step
    after which one more would pass the budget, its lr then at the floor; a resume carries the time spent.
    Nothing here depends on the machine's speed (a loaded machine takes fewer steps)."""
    budget = 6.0  # seconds
    extra = ["trainer.max_steps=3", f"trainer.max_minutes={budget / 60}", "trainer.warmup_steps=1",
             "trainer.log_every=1", "trainer.image_every=100000", "trainer.ckpt_every=3", "sample.n=0",
             "trainer.keep_checkpoints=1000"]
    cfg = cfg_of("pretrain", token_dir, tmp_path / "run", *extra)
    run = train(cfg)
    r = loss_rows(run)
    last = checkpoint.resolve(run)
    elapsed, step = checkpoint.load_state(last)["elapsed_s"], checkpoint.read_meta(last)["step"]
    assert r[-1]["step"] == step > 3  # past max_steps
    # the last step begins near the budget's end: inside it, or one step late where the step before took longer
    # than its predecessor predicted (a checkpoint written): the schedule is at its floor either way
    step_s = max(b["elapsed_s"] - a["elapsed_s"] for a, b in zip(r, r[1:]))
    assert budget - 2 * step_s < elapsed < budget + 2 * step_s
    floor, near_end = cfg.trainer.lr * cfg.trainer.min_lr_ratio, lr_at(10**9, cfg.trainer, budget - 2 * step_s)
    middle = min(r, key=lambda x: abs(x["elapsed_s"] - budget / 2))  # cosine at half time: 0.55 lr
    assert floor <= r[-1]["lr"] <= near_end and middle["lr"] > 3 * floor
    first = sorted((run / "checkpoints").glob("step-*"))[0]
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    for later in sorted((cut / "checkpoints").glob("step-*"))[1:]:
        shutil.rmtree(later)
    (cut / "checkpoints" / "latest").write_text(first.name)
    saved = checkpoint.load_state(first)["elapsed_s"]
    train(cfg_of("pretrain", token_dir, cut, *extra, "resume=true"))
    resumed = [x for x in loss_rows(cut) if x["step"] > 3]
    assert 0 < saved < budget and resumed and floor <= resumed[-1]["lr"] <= near_end
    assert checkpoint.load_state(checkpoint.resolve(cut))["elapsed_s"] > budget - 2 * step_s