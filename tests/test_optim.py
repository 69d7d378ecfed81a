"""The transformer's optimizers and the schedule: Muon's orthogonalized update and its bound, which tensor goes
to which optimizer at which lr, the AdamW half equal to PyTorch's AdamW, the lr schedules, and the clock of
trainer.max_minutes. Resume and the 2-process parity with Muon: tests/test_transformer.py."""

import pytest
import torch

from arlm.config import ModelConfig, TrainerConfig
from arlm.errors import ConfigError
from arlm.training.common import check, lr_at, set_lr
from arlm.training.optim import MuonAdamW, make_optimizer, orthogonalize, param_groups
from arlm.training.trainer import Clock
from arlm.transformer.model import Transformer

# After five Newton-Schulz steps every singular value s of g with s >= 2e-3 |g|_F comes out in [0.68, 1.21]
# (the scalar map of the quintic, iterated: arlm.training.optim); smaller ones stay in [0, 1.21].
BOUND = (0.68, 1.21)


def with_spectrum(m: int, n: int, sv: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(sv), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(sv), generator=g, dtype=torch.float64))
    return (u * sv) @ v.T, u, v


@pytest.mark.parametrize("m,n", [(64, 64), (192, 576), (576, 192), (8, 300)])
def test_the_update_is_orthogonal_within_the_bound_and_keeps_the_singular_vectors(m, n):
    k = min(m, n)
    sv = torch.logspace(0, 1.7, k, dtype=torch.float64)  # a condition number of 50
    g, u, v = with_spectrum(m, n, sv)
    assert sv.min() >= 2e-3 * sv.norm()  # inside the bound's premise
    out = orthogonalize(g.float()).double()
    s = torch.linalg.svdvals(out)
    assert BOUND[0] <= s.min() and s.max() <= BOUND[1]
    core = u.T @ out @ v  # U^T O V: diagonal when O = U f(S) V^T
    off = core - torch.diag(torch.diagonal(core))
    assert off.abs().max() < 1e-4 * core.abs().max()
    torch.testing.assert_close(orthogonalize(g.T.float()), orthogonalize(g.float()).T, atol=1e-5, rtol=1e-4)


def test_tiny_singular_values_stay_bounded_above():
    sv = torch.logspace(-6, 0, 32, dtype=torch.float64)
    s = torch.linalg.svdvals(orthogonalize(with_spectrum(32, 48, sv)[0].float()).double())
    assert s.max() <= BOUND[1] and s.min() >= 0


def tiny_model(tie: bool = True) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(dim=32, n_layers=2, n_heads=2, max_seq_len=32, tie_embeddings=tie), 64)


@pytest.mark.parametrize("tie", [True, False])
def test_each_tensor_goes_to_one_optimizer_at_its_lr(tie):
    model = tiny_model(tie)
    tc = TrainerConfig(optimizer="muon", lr=3e-3, muon_lr=0.02, weight_decay=0.05)
    opt = make_optimizer(model, tc, torch.device("cpu"))
    set_lr(opt, 1e-3)  # the schedule's lr at some step: Muon's groups at muon_lr / lr times it
    where = {id(p): g for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())  # a tied head is the embedding: one tensor, one entry
    assert len(where) == len(names) == sum(len(g["params"]) for g in opt.param_groups)
    for name, p in names.items():
        g = where[id(p)]
        hidden = name.startswith("blocks.") and p.dim() == 2
        assert g["muon"] == hidden, name
        assert g["lr"] == pytest.approx(1e-3 * (0.02 / 3e-3 if hidden else 1.0)), name
        decays = hidden or name == "head.weight"
        assert g["weight_decay"] == (0.05 if decays else 0.0), name
    assert ("head.weight" in names) == (not tie)


def test_the_adamw_groups_step_as_pytorch_adamw():
    a, b = tiny_model(), tiny_model()
    tc = TrainerConfig(optimizer="muon", lr=1e-2, weight_decay=0.1)
    ours = MuonAdamW([{**g, "muon": False} for g in param_groups(a, tc)], lr=1e-2, betas=(0.9, 0.95), momentum=0.95)
    ref = torch.optim.AdamW(param_groups(b, TrainerConfig(weight_decay=0.1)), lr=1e-2, betas=(0.9, 0.95))
    for step in range(3):
        for model in (a, b):
            torch.manual_seed(step)
            model(torch.randint(0, 64, (2, 8)), torch.zeros(2, 8, 2, dtype=torch.long)).square().mean().backward()
        ours.step(), ref.step()
        ours.zero_grad(), ref.zero_grad()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7, msg=name)


def test_a_muon_step_moves_a_matrix_by_lr_times_an_orthogonal_matrix():
    p = torch.nn.Parameter(torch.randn(48, 48))
    before = p.detach().clone()
    opt = MuonAdamW([{"params": [p], "muon": True, "weight_decay": 0.0}], lr=0.1, betas=(0.9, 0.95), momentum=0.0)
    p.grad = with_spectrum(48, 48, torch.logspace(0, 1.5, 48, dtype=torch.float64))[0].float()
    opt.step()
    s = torch.linalg.svdvals((before - p.detach()) / 0.1)
    assert BOUND[0] <= s.min() and s.max() <= BOUND[1]


def test_the_schedules_warm_up_decay_and_end_at_the_floor():
    cos = TrainerConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    wsd = TrainerConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule="wsd", cooldown=0.2)
    for tc in (cos, wsd):
        assert lr_at(0, tc) == pytest.approx(0.1) and lr_at(9, tc) == pytest.approx(1.0)
        assert lr_at(100, tc) == pytest.approx(0.1)
        lrs = [lr_at(s, tc) for s in range(10, 101)]
        assert all(x >= y for x, y in zip(lrs, lrs[1:]))  # never rises after the warm-up
    assert lr_at(80, wsd) == 1.0 and lr_at(81, wsd) < 1.0  # stable until the last 20% of the run's steps
    assert lr_at(91, wsd) == pytest.approx(1 - 0.9 * (0.91 - 0.8) / 0.2, rel=1e-6)
    timed = TrainerConfig(max_minutes=2, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule="wsd")
    assert lr_at(5000, timed, elapsed_s=60) == 1.0  # the step count does not matter, the time does
    assert lr_at(20, timed, elapsed_s=108) == pytest.approx(1 - 0.9 * 0.5)
    assert lr_at(20, timed, elapsed_s=500) == pytest.approx(0.1)


@pytest.mark.parametrize("key,value", [("schedule", "linear"), ("cooldown", 0.0), ("optimizer", "sgd"),
                                       ("max_minutes", -1.0)])
def test_bad_trainer_settings_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        check(TrainerConfig(**{key: value}))


def test_the_clock_ends_the_run_before_a_step_would_pass_the_budget(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("arlm.training.trainer.time.perf_counter", lambda: now[0])
    clock = Clock(1.0, torch.device("cpu"), 0)  # 60 s
    clock.offset = 10.0  # resumed from a checkpoint saved after 10 s
    ends = []
    for _ in range(40):
        elapsed = clock.read()
        ends.append(clock.ends_after_this_step())
        now[0] += 2.0  # a step of 2 s
        if ends[-1]:
            break
    assert elapsed == pytest.approx(58.0) and ends.count(True) == 1  # 58 + 2 = 60: this step was the last
