"""The online preference stage (`arimg grpo`): group advantages, the objective's direction, a tiny run end
to end with exact resume, bad inputs."""

import json

import pytest
import torch

from arlm.config import GRPOConfig, compose, to_object
from arlm.transformer.ckpt import load_model
from arlm.transformer.data import pad_text
from arlm.training.grpo import GroupReward, group_advantages
from arlm.transformer.objectives import sequence_logps
from arlm.training.transformer import train

TINY_GRPO = ["trainer=tiny", "trainer.compile=false", "data.batch_size=4", "grpo.group=2", "grpo.kinds=[single,count]",
             "grpo.per_kind=4", "grpo.reward=prefs_reward:brightness", "sample.n=1", "sample.prompts=[a red circle]",
             "trainer.image_every=100"]


def grpo_cfg(init, run, *extra):
    return to_object(compose("grpo", [*TINY_GRPO, f"init_from={init}", f"run_dir={run}", *extra]))


def loss_rows(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_group_advantages_normalise_each_group_and_zero_the_flat_ones():
    adv = group_advantages([0.2, 0.4, 0.6, 0.5, 0.5, 0.5, 1.0, 0.0, 0.5], 3, 0.02)
    assert adv[3:6] == [0.0, 0.0, 0.0]  # no spread: no signal, and no division by ~0
    for g in (adv[0:3], adv[6:9]):
        assert sum(g) == pytest.approx(0.0, abs=1e-12)
        assert sum(a * a for a in g) / 3 == pytest.approx(1.0)
    assert adv[0] < adv[1] < adv[2] and adv[6] > adv[8] > adv[7]


def test_one_step_raises_what_scored_above_its_group(tiny_lm):
    model, vocab, _ = load_model(tiny_lm, "cpu", ema=False)
    model.train()
    h, w = vocab.grid
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, vocab.codebook_size, (2, h * w), generator=g)
    text, lengths = pad_text([vocab.encode_text("a red circle")] * 2, len(vocab.encode_text("a red circle")))
    tokens, pos, region = vocab.build(text, lengths, codes, h, w, vocab.seq_len(text.shape[1], h, w))
    adv, reward = torch.tensor([1.0, -1.0]), torch.tensor([0.9, 0.1])

    def logps():
        with torch.no_grad():
            return sequence_logps(model(tokens[:, :-1], pos[:, :-1]), tokens, region)

    before = logps()
    loss, stats = GroupReward(GRPOConfig())(model, (tokens, pos, region, adv, reward))
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.05).step()
    after = logps()
    assert after[0] > before[0] and after[1] < before[1]
    assert stats[1] == 2 and stats[2] == pytest.approx(1.0) and stats[3] == 2


def test_a_tiny_grpo_run_resumes_exactly(tmp_path, tiny_lm, reward_module):
    from test_transformer import _assert_same_run, _cut_at_step_2

    extra = ["trainer.ema=0.9", "trainer.grad_accum=2"]
    full = train(grpo_cfg(tiny_lm, tmp_path / "full", *extra))
    rows = loss_rows(full)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(0 <= r["reward"] <= 1 and 0 <= r["kept"] <= 1 and r["logp"] < 0 for r in rows)
    assert (full / "rewards.png").is_file() and (full / "images" / "samples-0000004.png").is_file()
    cut = _cut_at_step_2(full, tmp_path / "cut")
    train(grpo_cfg(tiny_lm, cut, *extra, "resume=true"))
    _assert_same_run(full, cut)


def test_grpo_bad_inputs_exit_2(tmp_path, tiny_lm, tiny_run, reward_module, run_cli):
    def run(*args):
        code, out, err = run_cli("grpo", *TINY_GRPO, f"run_dir={tmp_path / 'x'}", *args)
        assert out == "" and err.count("arimg: error:") == 1, err
        return code, err

    assert run()[0] == 2  # no init_from
    code, err = run(f"init_from={tiny_lm}", "grpo.group=1")
    assert code == 2 and "grpo.group" in err
    code, err = run(f"init_from={tiny_lm}", "data.batch_size=5")
    assert code == 2 and "multiple of grpo.group" in err
    code, err = run(f"init_from={tiny_lm}", "grpo.reward=no_such_module:f")
    assert code == 2 and "no_such_module" in err
    code, err = run(f"init_from={tiny_run}")  # a tokenizer run
    assert code == 2 and "tokenizer" in err
    assert not (tmp_path / "x" / "checkpoints").exists()
