"""`arimg grpo`: online preference optimisation on groups of the model's own samples (GRPO-style).

The offline pairs of `arimg dpo` are drawn once, from the starting model; here every step draws its own.
Each step takes `data.batch_size / grpo.group` prompts (a seeded draw from the grammar's training captions
or a prompts file), samples `grpo.group` images of each from the current weights at the sampling settings
of evaluation, scores every image with the reward (the judge's graded score by default, or a
module:function), and turns the scores into advantages inside each prompt's group:

    A_i = (r_i - mean(r)) / std(r),   or 0 for every image of a group with std(r) < grpo.min_std

(a group whose images all score alike says nothing about what to prefer: it gets weight 0 instead of a
division by a tiny spread, Shao et al. 2024 and Yu et al. 2025). The loss is the policy gradient
-sum_i A_i * log pi(image_i | prompt) / n_visual, one update per batch, so the PPO ratio is 1 and needs no
clipping. The mean is over the batch's images, flat groups included (a constant normaliser). Guidance
and top-k make the samples come from a sharpened policy, not pi itself; the update still raises what
scored above its group and lowers what scored below, and it trains what evaluation draws.

The stage is the one trainer of arlm.training.transformer with two parts of its own: `OnlineBatches` (the
batch of a step, sampled and scored) and `GroupReward` (the objective). The draws are seeded by step, so
`resume=true` continues exactly.
"""

from __future__ import annotations

import random
import statistics
import zlib

import torch

from arlm.config import GRPOConfig, GRPOStageConfig
from arlm.data.shards import SkipCounter
from arlm.errors import ConfigError
from arlm.generation.judged import sample_and_judge
from arlm.generation.prompts import choose_prompts
from arlm.generation.rewards import build_reward
from arlm.tokenizer.codec import load_tokenizer
from arlm.transformer.data import TokenInfo, pad_text
from arlm.transformer.objectives import sequence_logps
from arlm.transformer.sample import Settings, check_prompt
from arlm.transformer.sequence import VISUAL_R, Vocab


def group_advantages(rewards: list[float], group: int, min_std: float) -> list[float]:
    """Rewards normalised within each run of `group` consecutive entries; 0 for a group that does not spread."""
    out: list[float] = []
    for g in range(0, len(rewards), group):
        rs = rewards[g:g + group]
        mean, std = statistics.fmean(rs), statistics.pstdev(rs)
        out += [0.0] * len(rs) if std < min_std else [(r - mean) / std for r in rs]
    return out


def check_config(cfg: GRPOStageConfig, world: int) -> None:
    g = cfg.grpo
    if g.group < 2:
        raise ConfigError(f"grpo.group must be at least 2 (advantages compare samples of one prompt), got {g.group}")
    if cfg.data.batch_size % (g.group * world):
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} must be a multiple of grpo.group {g.group} x "
                          f"{world} process(es): each process samples whole groups")
    if g.min_std < 0:
        raise ConfigError("grpo.min_std must be >= 0")
    if world > 1 and cfg.trainer.parallel != "ddp":
        raise ConfigError("grpo samples with each process's whole model: use trainer.parallel=ddp")


class OnlineBatches:
    """The micro-batches (tokens, positions, region, advantages, rewards) of one step, sampled from the
    model being trained and scored. Each process samples its own share of the step's groups."""

    def __init__(self, cfg: GRPOStageConfig, vocab: Vocab, info: TokenInfo, model: torch.nn.Module,
                 device: torch.device, precision: str, rank: int = 0, world: int = 1, accum: int = 1) -> None:
        check_config(cfg, world)
        self.cfg, self.g, self.vocab, self.model, self.device = cfg, cfg.grpo, vocab, model, device
        self.precision, self.rank, self.world, self.accum = precision, rank, world, accum
        self.grid = tuple(info.grid)
        self.prompts = choose_prompts(self.g)
        if not self.prompts:
            raise ConfigError("grpo: no prompts")
        for p in self.prompts:
            check_prompt(vocab, p, *self.grid, cfg.model.max_seq_len)
        self.text_len = max(len(vocab.encode_text(p)) for p in self.prompts)
        self.seq_len = vocab.seq_len(self.text_len, *self.grid)
        try:
            self.settings = Settings.from_config(self.g.sampling)
            self.settings.check()
        except ValueError as e:
            raise ConfigError(f"grpo.sampling: {e}") from None
        self.reward = build_reward(self.g.reward)
        self.tokenizer = load_tokenizer(vocab.tokenizer, "cpu")
        self.local = cfg.data.batch_size // world  # images this process samples per step
        self.skips = SkipCounter()  # the trainer reports it; online batches skip nothing

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.data.batch_size * self.seq_len

    def step_prompts(self, step: int) -> list[str]:
        """The global step's prompts, one per group (a seeded draw: the same at a resume)."""
        n = self.cfg.data.batch_size // self.g.group
        rng = random.Random(f"grpo-{self.cfg.data.seed}-{step}")
        if n <= len(self.prompts):
            return [self.prompts[i] for i in rng.sample(range(len(self.prompts)), n)]
        return [rng.choice(self.prompts) for _ in range(n)]

    def batch(self, step: int):
        groups = self.local // self.g.group
        mine = self.step_prompts(step)[self.rank * groups:(self.rank + 1) * groups]
        prompts = [p for p in mine for _ in range(self.g.group)]
        first = self.rank * self.local  # global index of this process's first image: its seeds
        seeds = [zlib.crc32(f"grpo\0{self.cfg.data.seed}\0{step}\0{first + i}".encode()) for i in range(len(prompts))]
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            judged = sample_and_judge(self.model, self.vocab, prompts, seeds, self.grid, self.settings, self.precision,
                                      self.tokenizer, self.g.judge if self.reward.needs_verdict else None,
                                      batch_size=self.local)
        self.model.train(was_training)
        rewards = [self.reward(j) for j in judged]
        adv = group_advantages(rewards, self.g.group, self.g.min_std)
        ids = [self.vocab.encode_text(p) for p in prompts]
        text, lengths = pad_text(ids, self.text_len)
        codes = torch.stack([j.codes.reshape(-1) for j in judged]).long()
        tokens, pos, region = self.vocab.build(text.to(self.device), lengths.to(self.device), codes.to(self.device),
                                               *self.grid, self.seq_len)
        adv_t = torch.tensor(adv, dtype=torch.float32, device=self.device)
        rew_t = torch.tensor(rewards, dtype=torch.float32, device=self.device)
        m = self.local // self.accum
        return [(tokens[i:i + m], pos[i:i + m], region[i:i + m], adv_t[i:i + m], rew_t[i:i + m])
                for i in range(0, self.local, m)]


class GroupReward:
    """The objective of `arimg grpo` (see the module docstring); micro-batches from `OnlineBatches`."""

    shown = ("loss", "reward", "kept")  # on the progress bar
    plots = {"loss.png": (("loss",), False), "rewards.png": (("reward", "kept"), False)}
    n_stats = 5  # [loss, images, reward, images in groups that spread, mean log-prob per visual token]

    def __init__(self, cfg: GRPOConfig) -> None:
        self.cfg = cfg

    def norm(self, micro) -> torch.Tensor:
        return torch.tensor(float(micro[0].shape[0]), device=micro[0].device)

    def __call__(self, net, micro) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, pos, region, adv, reward = micro
        n_vis = (region[:, 1:] == VISUAL_R).sum(-1)
        mean_logp = sequence_logps(net(tokens[:, :-1], pos[:, :-1]), tokens, region) / n_vis
        losses = -adv * mean_logp
        stats = torch.stack([losses.sum(), torch.tensor(float(len(adv)), device=adv.device), reward.sum(),
                             (adv != 0).float().sum(), mean_logp.sum()]).detach()
        return losses.sum(), stats

    def metrics(self, s: list[float]) -> dict[str, float]:
        n = max(s[1], 1)
        return {"loss": s[0] / n, "reward": s[2] / n, "kept": s[3] / n, "logp": s[4] / n}
