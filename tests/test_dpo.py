"""The preference stage: DPO losses on hand-made log-probs, per-sequence log-probs, make-prefs (rewards,
labels, margins, token shards), a tiny dpo run end to end, resume equality, 1 vs 2 processes, bad inputs."""

import io
import json
import math
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch

from arlm import checkpoint
from arlm.config import DPOConfig, compose, to_object
from arlm.errors import ConfigError
from arlm.transformer.ckpt import load_model
from arlm.transformer.data import pad_text
from arlm.training.dpo import dpo_loss
from arlm.transformer.objectives import sequence_logps
from arlm.generation.prefs import choose_pairs, make_prefs
from arlm.transformer.sequence import VISUAL_R
from arlm.training.transformer import train

TINY_DPO = ["trainer=tiny", "trainer.compile=false", "data.batch_size=8", "sample.n=1", "sample.prompts=[a red circle]",
            "trainer.image_every=100"]
REWARD = "prefs_reward:brightness"


# --- the loss ----------------------------------------------------------------------------------------------

def test_sigmoid_dpo_is_log2_at_equal_margins_and_its_gradient_prefers_the_chosen():
    pc, pr = torch.tensor([-10.0, -3.0], requires_grad=True), torch.tensor([-12.0, -1.0], requires_grad=True)
    rc, rr = torch.tensor([-10.0, -3.0]), torch.tensor([-12.0, -1.0])  # the policy is the reference: h = 0
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, DPOConfig())
    assert torch.allclose(losses, torch.full((2,), math.log(2)))
    assert torch.equal(chosen, torch.zeros(2)) and torch.equal(rejected, torch.zeros(2))
    losses.sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # descent raises chosen, lowers rejected
    assert torch.allclose(pc.grad, torch.full((2,), -0.05)) and torch.allclose(pr.grad, torch.full((2,), 0.05))


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("robust", 0.1)])
def test_dpo_losses_match_their_formulas(loss_type, eps):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(5, generator=g) * 5 - 20 for _ in range(4))
    cfg = DPOConfig(loss_type=loss_type, beta=0.3, label_smoothing=eps)
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, cfg)
    for i in range(5):
        h = float((pc[i] - rc[i]) - (pr[i] - rr[i]))
        ls = lambda x: -math.log1p(math.exp(-x))  # log sigmoid
        want = {"sigmoid": -(1 - eps) * ls(0.3 * h) - eps * ls(-0.3 * h),
                "ipo": (h - 1 / (2 * 0.3)) ** 2,
                "robust": (-(1 - eps) * ls(0.3 * h) + eps * ls(-0.3 * h)) / (1 - 2 * eps)}[loss_type]
        assert float(losses[i]) == pytest.approx(want, rel=1e-5)
        assert float(chosen[i] - rejected[i]) == pytest.approx(0.3 * h, rel=1e-5, abs=1e-5)


def test_sequence_logps_sum_the_visual_tokens_of_a_plain_forward(tiny_lm, token_dir):
    from arlm.config import TokenDataConfig
    from arlm.transformer.data import Batches, token_info

    model, vocab, _ = load_model(tiny_lm, "cpu")
    batches = Batches(TokenDataConfig(shards=str(token_dir), batch_size=4, caption_dropout=0.0), vocab,
                      token_info(str(token_dir)), model.cfg.max_seq_len, torch.device("cpu"))
    tokens, pos, region = batches.batch(0)[0]
    with torch.no_grad():
        got = sequence_logps(model(tokens[:, :-1], pos[:, :-1]), tokens, region)
        for b in range(tokens.shape[0]):  # one sequence at a time, token by token
            logits = model(tokens[b:b + 1, :-1], pos[b:b + 1, :-1])[0].log_softmax(-1)
            want = sum(float(logits[t, tokens[b, t + 1]]) for t in range(tokens.shape[1] - 1)
                       if region[b, t + 1] == VISUAL_R)
            assert float(got[b]) == pytest.approx(want, rel=1e-5)


def test_pairs_clear_the_margin_and_never_pair_a_sample_with_itself():
    assert choose_pairs([0.5, 0.9, 0.1, 0.9], 0.3, "best-worst") == [(1, 2)]
    assert choose_pairs([0.5, 0.5], 0.0, "best-worst") == []
    assert choose_pairs([0.5, 0.52], 0.1, "best-worst") == []
    pairs = choose_pairs([0.5, 0.9, 0.1], 0.3, "all")
    assert sorted(pairs) == [(0, 2), (1, 0), (1, 2)]
    # disjoint: each sample in one pair at most, best with worst inwards, while the gap clears the margin and
    # is above 0 (a tie is no preference); float rounding does not drop a pair that clears it exactly
    assert choose_pairs([1, 0, 0, 1, 0, 1, 0], 0.5, "disjoint") == [(0, 6), (3, 4), (5, 2)]
    assert choose_pairs([0.9, 0.5, 0.1, 0.45], 0.3, "disjoint") == [(0, 2)]
    assert choose_pairs([1, 1, 0], 0.5, "disjoint") == [(0, 2)]
    assert choose_pairs([0.5, 0.5, 0.5], 0.0, "disjoint") == []
    assert choose_pairs([0.5, 0.7, 0.5], 0.0, "disjoint") == [(1, 2)]
    assert choose_pairs([0.6, 0.4], 0.2, "disjoint") == [(0, 1)] == choose_pairs([0.6, 0.4], 0.2, "best-worst")
    rewards = [0.3, 0.8, 0.1, 0.9, 0.4, 0.2, 0.7, 0.6]  # ranked: 3, 1, 6, 7, 4, 0, 5, 2
    expect = {0.0: [(3, 2), (1, 5), (6, 0), (7, 4)], 0.2: [(3, 2), (1, 5), (6, 0), (7, 4)],
              0.5: [(3, 2), (1, 5)], 0.9: []}
    for margin, pairs in expect.items():
        assert choose_pairs(rewards, margin, "disjoint") == pairs
        used = [i for pair in pairs for i in pair]
        assert len(used) == len(set(used)) and all(rewards[c] - rewards[r] >= margin - 1e-9 for c, r in pairs)


def _one_error(err: str) -> bool:
    """One error line (progress bars may come before it on stderr) and no traceback."""
    return sum(ln.startswith("arimg: error:") for ln in err.splitlines()) == 1 and "Traceback" not in err


# --- make-prefs ----------------------------------------------------------------------------------------------

def prefs_cfg(out, *extra):
    return to_object(compose("make_prefs", ["kinds=[single,count]", "per_kind=6", "k=4", "batch_size=16",
                                            f"out={out}", "margin=0.0", *extra]))


@pytest.fixture(scope="module")
def prefs(tmp_path_factory, tiny_lm, reward_module):
    out = tmp_path_factory.mktemp("prefs") / "p"
    report = make_prefs(str(tiny_lm), prefs_cfg(out, f"reward={REWARD}", "pairs=all"))
    return out, report


def read_pairs(out):
    pairs = []
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for key in sorted({n.split(".")[0] for n in files}):
            pairs.append((json.loads(files[f"{key}.json"]),
                          *(np.load(io.BytesIO(files[f"{key}.{s}.npy"])) for s in ("chosen", "rejected"))))
    return pairs


def test_make_prefs_stores_the_models_tokens_with_their_reference_logps(prefs, tiny_lm):
    out, report = prefs
    pairs = read_pairs(out)
    assert len(pairs) == report["pairs"] > 0 and report["samples"] == report["prompts"] * 4
    model, vocab, _ = load_model(tiny_lm, "cpu", ema=False)
    cands = {(c["prompt"], c["index"]): c for c in map(json.loads, (out / "candidates" / "candidates.jsonl").open())}
    for meta, chosen, rejected in pairs[:6]:
        assert meta["chosen"]["reward"] - meta["rejected"]["reward"] >= 0 and meta["chosen"]["index"] != meta["rejected"]["index"]
        for side, codes in (("chosen", chosen), ("rejected", rejected)):
            assert cands[(meta["prompt"], meta[side]["index"])]["reward"] == meta[side]["reward"]  # one prompt, two samples
            ids = vocab.encode_text(meta["prompt"])  # one unpadded sequence (make-prefs batches padded ones)
            text, lengths = pad_text([ids], len(ids))
            h, w = codes.shape
            tokens, pos, region = vocab.build(text, lengths, torch.from_numpy(codes.astype(np.int64)).reshape(1, -1),
                                              h, w, vocab.seq_len(len(ids), h, w))
            with torch.no_grad():
                lp = float(sequence_logps(model(tokens[:, :-1], pos[:, :-1]), tokens, region)[0])
            assert lp == pytest.approx(meta["ref_logps"][0 if side == "chosen" else 1], rel=1e-4)
    assert (out / "pairs.png").is_file() and (out / "tokens.json").is_file() and (out / "prefs.json").is_file()


def test_make_prefs_with_the_judge_keeps_pairs_that_clear_the_margin(tmp_path, tiny_lm):
    # hot sampling: the tiny model's images differ enough for the judge to score them apart
    report = make_prefs(str(tiny_lm), prefs_cfg(tmp_path / "j", "kinds=[single]", "k=6", "margin=0.05",
                                                "sampling.temperature=3", "sampling.top_k=0", "sampling.cfg=1"))
    pairs = read_pairs(tmp_path / "j")
    assert report["reward"] == "judge" and len(pairs) == report["pairs"] >= 1
    for meta, _, _ in pairs:
        assert meta["chosen"]["reward"] - meta["rejected"]["reward"] >= 0.05 and meta["kind"] == "single"
    assert report["pairs"] + report["prompts_without_pair"] == report["prompts"]


def test_a_labels_file_decides_the_pairs(tmp_path, tiny_lm):
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"prompt": "a red circle", "chosen": 2, "rejected": 0}\n'
                      '{"prompt": "two blue squares", "chosen": 1, "rejected": 3}\n')
    report = make_prefs(str(tiny_lm), prefs_cfg(tmp_path / "l", f"labels={labels}"))
    got = [(m["prompt"], m["chosen"]["index"], m["rejected"]["index"]) for m, _, _ in read_pairs(tmp_path / "l")]
    assert got == [("a red circle", 2, 0), ("two blue squares", 1, 3)] and report["mode"] == "labels"


def test_reward_accept_is_the_judge_s_verdict(tmp_path, tiny_lm):
    """reward=accept: every candidate's reward is 1 exactly when the judge accepted it, and pairs join an
    accepted sample to a rejected one."""
    import json as json_

    from PIL import Image

    from arlm.errors import ConfigError
    from arlm.generation.rewards import judge_accepts

    try:
        report = make_prefs(str(tiny_lm), prefs_cfg(tmp_path / "a", "reward=accept", "margin=0.5", "pairs=all"))
    except ConfigError as e:  # the tiny model may draw nothing the judge accepts: then no pair, said so
        assert "no pair of samples differs" in str(e)
        report = None
    rows = [json_.loads(ln) for ln in (tmp_path / "a" / "candidates" / "candidates.jsonl").read_text().splitlines()]
    assert rows and all(r["reward"] == judge_accepts(Image.open(r["path"]), r["prompt"]) for r in rows)
    if report is None:
        return
    assert report["reward"] == "accept"
    for meta, _, _ in read_pairs(tmp_path / "a"):
        assert (meta["chosen"]["reward"], meta["rejected"]["reward"]) == (1.0, 0.0)


def test_truth_adds_the_data_image_of_each_prompt_as_one_more_judged_candidate(tmp_path, tiny_lm, reward_module):
    """truth=true: candidate k of each prompt is the synthetic set's image of it, encoded by the model's tokenizer
    (codes equal to encoding that image), scored by the reward on its decoded image, and paired as any sample."""
    from PIL import Image

    from arlm.tokenizer.codec import load_tokenizer
    from arlm.generation.prompts import grammar_samples
    from prefs_reward import brightness

    out = tmp_path / "t"
    report = make_prefs(str(tiny_lm), prefs_cfg(out, f"reward={REWARD}", "pairs=all", "truth=true"))
    rows_ = [json.loads(ln) for ln in (out / "candidates" / "candidates.jsonl").read_text().splitlines()]
    data = [r for r in rows_ if r["source"] == "data"]
    assert report["truth"]["candidates"] == report["prompts"] == len(data) and len(rows_) == report["prompts"] * 5
    assert all(r["index"] == 4 and r["seed"] == -1 for r in data)
    assert all(r["reward"] == brightness(Image.open(r["path"]), r["prompt"]) for r in data)
    _, vocab, _ = load_model(tiny_lm, "cpu", ema=False)
    tok = load_tokenizer(vocab.tokenizer, "cpu")
    images = {}
    w, h = Image.open(data[0]["path"]).size  # the model's image size
    for s in grammar_samples(["single", "count"], 6, 0, (h, w)):
        images.setdefault(s.caption, s.image)
    pairs = read_pairs(out)
    from_data = [(m, c if m["chosen"]["source"] == "data" else r) for m, c, r in pairs
                 if "data" in (m["chosen"]["source"], m["rejected"]["source"])]
    assert from_data and report["truth"]["chosen"] + report["truth"]["rejected"] == len(from_data)
    for meta, codes in from_data[:4]:
        assert np.array_equal(codes.astype(np.int64), tok.encode_image(images[meta["prompt"]]).numpy())
    with pytest.raises(Exception, match="truth=true"):
        make_prefs(str(tiny_lm), prefs_cfg(tmp_path / "f", f"reward={REWARD}", "truth=true", f"labels={out}/x"))


def test_a_reward_module_in_the_current_directory_imports(tmp_path, monkeypatch):
    from arlm.generation.rewards import load_reward

    (tmp_path / "cwd_reward.py").write_text("def half(image, prompt):\n    return 0.5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    assert load_reward("cwd_reward:half")(None, "a red circle") == 0.5


def test_make_prefs_bad_inputs_exit_2(tmp_path, tiny_lm, reward_module, run_cli):
    bad_labels = tmp_path / "bad.jsonl"
    bad_labels.write_text('{"prompt": "a red circle", "chosen": 9, "rejected": 0}\n')
    for extra in (["reward=no_such_module:f"], ["reward=prefs_reward:words"], [f"labels={bad_labels}"],
                  ["margin=2.0", f"reward={REWARD}"], ["pairs=some"]):
        code, out, err = run_cli("make-prefs", "--ckpt", tiny_lm, "kinds=[single]", "per_kind=2", "k=2",
                                 f"out={tmp_path / 'x'}", "overwrite=true", *extra)
        assert code == 2 and out == "" and _one_error(err), (extra, err)


# --- dpo ------------------------------------------------------------------------------------------------------

def dpo_cfg(prefs_dir, init, run, *extra):
    return to_object(compose("dpo", [*TINY_DPO, f"data.shards={prefs_dir}", f"init_from={init}", f"run_dir={run}",
                                     *extra]))


def rows(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_a_tiny_dpo_run_starts_at_the_reference_and_raises_the_margin(tmp_path, prefs, tiny_lm):
    out, _ = prefs
    run = train(dpo_cfg(out, tiny_lm, tmp_path / "dpo", "trainer.max_steps=8", "trainer.lr=1e-2"))
    r = rows(run)
    assert [x["step"] for x in r] == list(range(1, 9))
    first = r[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference before the first update
    assert abs(first["rewards/chosen"]) < 1e-4 and abs(first["rewards/rejected"]) < 1e-4
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected"):
        assert all(math.isfinite(x[key]) for x in r)
    assert r[-1]["rewards/margins"] > first["rewards/margins"]
    assert (run / "rewards.png").is_file() and checkpoint.latest(run) is not None
    stored = train(dpo_cfg(out, tiny_lm, tmp_path / "stored", "trainer.max_steps=3"))
    live = train(dpo_cfg(out, tiny_lm, tmp_path / "live", "trainer.max_steps=3", "dpo.reference=live"))
    for a, b in zip(rows(live), rows(stored)):  # a frozen copy of the initial model gives the stored log-probs
        for key in ("loss", "rewards/chosen", "rewards/rejected"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6)


def test_dpo_epochs_sets_the_run_length_from_the_pair_count(tmp_path, prefs, tiny_lm):
    out, report = prefs
    run = train(dpo_cfg(out, tiny_lm, tmp_path / "e", "dpo.epochs=1.5", "trainer.max_steps=1000"))
    steps = math.ceil(1.5 * report["pairs"] / 8)  # data.batch_size=8 pairs per step
    assert [x["step"] for x in rows(run)] == list(range(1, steps + 1))
    assert checkpoint.latest(run).name.endswith(f"{steps:07d}")
    with pytest.raises(ConfigError, match="dpo.epochs"):
        train(dpo_cfg(out, tiny_lm, tmp_path / "n", "dpo.epochs=-1"))


def test_dpo_resume_continues_the_same_run(tmp_path, prefs, tiny_lm):
    from test_transformer import _assert_same_run, _cut_at_step_2

    out, _ = prefs
    extra = ["trainer.ckpt_every=2", "trainer.ema=0.9", "trainer.grad_accum=2", "dpo.ntp_weight=0.5"]
    full = train(dpo_cfg(out, tiny_lm, tmp_path / "full", *extra))
    cut = _cut_at_step_2(full, tmp_path / "cut")
    train(dpo_cfg(out, tiny_lm, cut, *extra, "resume=true"))
    _assert_same_run(full, cut)


def test_dpo_on_two_processes_gives_the_loss_of_one(tmp_path, prefs, tiny_lm):
    out, _ = prefs
    one = train(dpo_cfg(out, tiny_lm, tmp_path / "one", "trainer.max_steps=3", "trainer.ckpt_every=3"))
    run = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "arimg", "dpo",
           *TINY_DPO, f"data.shards={out}", f"init_from={tiny_lm}", f"run_dir={run}", "trainer.max_steps=3",
           "trainer.ckpt_every=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for ra, rb in zip(rows(one), rows(run)):
        for key in ("loss", "rewards/margins", "logps/chosen"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-5)


def test_dpo_refuses_pairs_of_another_vocabulary(tmp_path, prefs, token_dir, run_cli):
    out, _ = prefs
    other = tmp_path / "other"  # a model with word pieces: its ids are not the pairs'
    code, _, err = run_cli("pretrain", "model=tiny", *TINY_DPO, f"data.shards={token_dir}", f"run_dir={other}",
                           "data.words=8", "trainer.max_steps=1")
    assert code == 0, err
    code, stdout, err = run_cli("dpo", *TINY_DPO, f"data.shards={out}", f"init_from={other}", f"run_dir={tmp_path / 'd'}")
    assert code == 2 and stdout == "" and "vocabulary" in err and _one_error(err)
    code, _, err = run_cli("dpo", *TINY_DPO, f"data.shards={token_dir}", f"init_from={other}", f"run_dir={tmp_path / 'e'}")
    assert code != 0 and "make-prefs" in err and _one_error(err)
    code, _, err = run_cli("dpo", *TINY_DPO, f"data.shards={out}", f"run_dir={tmp_path / 'f'}")
    assert code == 2 and "init_from" in err
    code, _, err = run_cli("dpo", *TINY_DPO, f"data.shards={out}", f"init_from={other}", "dpo.loss_type=hinge",
                           f"run_dir={tmp_path / 'g'}")
    assert code == 2 and "loss_type" in err
