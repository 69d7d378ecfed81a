"""What a transformer stage minimises: the objective the one training loop (arlm.training.transformer) calls.

An objective turns one micro-batch into (loss sum, statistics): the loss is a *sum* over the micro-batch,
which the loop divides by the global batch's normaliser (`norm`, summed over micro-batches and processes),
so gradient accumulation and N processes give the gradient of one big batch; the statistics are a fixed
vector of sums that the loop adds up between log steps and turns into named metrics (`metrics`).

- `NextToken`: pretrain and sft, weighted next-token cross-entropy (+ z-loss).
- `NextPatch`: the same with the visual tokens in p x p groups (`loss.patch`), next-patch prediction.
- the preference objective of `arimg dpo` lives in arlm.training.dpo.

`sequence_logps` is the per-sequence log-likelihood of the visual tokens that preference data and DPO need
(the part TRL's `get_batch_logps` plays).
"""

from __future__ import annotations

import torch

from arlm.config import TransformerStageConfig
from arlm.errors import ConfigError
from arlm.transformer.sequence import END_R, PAD_R, TEXT_R, VISUAL_R


def region_weights(cfg: TransformerStageConfig, device: torch.device) -> torch.Tensor:
    """Loss weight of a target by its region (PAD, TEXT, VISUAL, END)."""
    w = torch.zeros(4, device=device)
    w[VISUAL_R] = 1.0
    if not cfg.loss.visual_only:
        w[TEXT_R], w[END_R] = cfg.loss.text_weight, 1.0
    w[PAD_R] = 0.0
    return w


def token_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, region: torch.Tensor,
               z_loss: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective sum, stats) in fp32: sum of weighted cross-entropy (+ z-loss), and the detached sums
    [weighted ce, weight, visual ce, visual count]. One logsumexp serves both the cross-entropy and the z-loss.
    logits (B, T, V); targets, weights and region (B, T), or (B, T, G) for G targets of one position under its
    one distribution (next-patch prediction), each visual one counting 1/G."""
    if targets.dim() == 2:
        targets, weights, region = targets.unsqueeze(-1), weights.unsqueeze(-1), region.unsqueeze(-1)
    logits = logits.float()
    lse = logits.logsumexp(-1)  # (B, T)
    ce = lse.unsqueeze(-1) - logits.gather(-1, targets)  # (B, T, G)
    obj = (ce * weights).sum()
    if z_loss > 0:
        obj = obj + z_loss * (lse.pow(2) * (weights.sum(-1) > 0)).sum()
    vis = (region == VISUAL_R).float() / targets.shape[-1]
    stats = torch.stack([(ce * weights).sum(), weights.sum(), (ce * vis).sum(), vis.sum()]).detach()
    return obj, stats


def sequence_logps(logits: torch.Tensor, tokens: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(B,) fp32: log p(visual tokens | everything before them) of each sequence, summed over its visual
    targets. `logits` (B, T-1, V) are the model's outputs on tokens[:, :-1]; `region` (B, T) the tokens'."""
    logp = logits.float().log_softmax(-1).gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return (logp * (region[:, 1:] == VISUAL_R)).sum(-1)


class NextToken:
    """pretrain and sft: cross-entropy of every target, weighted by its region (`region_weights`)."""

    n_stats = 4  # [weighted ce, weight, visual ce, visual count]
    shown = ("loss", "loss_visual")  # on the progress bar
    plots = {"loss.png": (("loss", "loss_visual"), True)}  # file: (metrics, log scale)

    def __init__(self, cfg: TransformerStageConfig, device: torch.device) -> None:
        self.weights, self.z_loss = region_weights(cfg, device), cfg.loss.z_loss

    def norm(self, micro) -> torch.Tensor:
        """The micro-batch's share of the normaliser: the summed weight of its targets."""
        return self.weights[micro[2][:, 1:]].sum()

    def __call__(self, net, micro) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, pos, region = micro
        logits = net(tokens[:, :-1], pos[:, :-1])  # (B, T-1, V)
        return token_loss(logits, tokens[:, 1:], self.weights[region[:, 1:]], region[:, 1:], self.z_loss)

    def metrics(self, s: list[float]) -> dict[str, float]:
        return {"loss": s[0] / s[1], "loss_visual": s[2] / max(s[3], 1)}


class NextPatch(NextToken):
    """Next-patch prediction (NPP, Pang et al., 2024), `loss.patch` = p > 1: the grid's visual tokens enter as
    p x p groups, each one position whose input is the mean of its tokens' embeddings (at the mean of their
    rope positions), in raster order of the groups; text, layout and end tokens stay one position each. A
    position's targets are the tokens of the position after it: one token, or the p^2 tokens of the next
    group, each with a p^2-th of its weight (the mean cross-entropy of the group, under the one distribution
    the position predicts). The sequence is p^2 times shorter over the image, so a step costs a fraction of a
    next-token step; the model is not yet a next-token sampler, which a later phase at patch 1 makes it."""

    def __init__(self, cfg: TransformerStageConfig, device: torch.device, grid: tuple[int, int]) -> None:
        super().__init__(cfg, device)
        p, (h, w) = cfg.loss.patch, grid
        if h % p or w % p:
            raise ConfigError(f"loss.patch={p} must divide the token grid {h}x{w}")
        self.p, self.n = p, h * w
        gi, gj = torch.meshgrid(torch.arange(h // p), torch.arange(w // p), indexing="ij")  # group (row, col)
        a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")  # place within a group
        rows, cols = gi.reshape(-1, 1) * p + a.reshape(1, -1), gj.reshape(-1, 1) * p + b.reshape(1, -1)
        self.offsets = (rows * w + cols).to(device)  # (groups, p^2): raster index of each group's tokens

    def positions(self, seq_len: int) -> int:
        """The length of the shorter sequence of a `seq_len`-token one."""
        return seq_len - self.n + self.offsets.shape[0]

    def groups(self, region: torch.Tensor) -> torch.Tensor:
        """Token indices (B, T', p^2) of each position of the shorter sequence: a group's p^2 tokens, or one
        token p^2 times."""
        vis = region == VISUAL_R
        if not bool((vis.sum(1) == self.n).all()):
            raise ConfigError(f"loss.patch needs every sequence to hold the {self.n} tokens of the data's grid")
        v0 = vis.int().argmax(1, keepdim=True)  # (B, 1) the first visual token
        m = self.offsets.shape[0]
        j = torch.arange(self.positions(region.shape[1]), device=region.device).unsqueeze(0)  # (1, T')
        k = j - v0
        single = torch.where(k < 0, j, j + self.n - m).unsqueeze(-1).expand(-1, -1, self.p ** 2)
        grouped = v0.unsqueeze(-1) + self.offsets[k.clamp(0, m - 1)]
        return torch.where(((k >= 0) & (k < m)).unsqueeze(-1), grouped, single)

    def norm(self, micro) -> torch.Tensor:
        src = self.groups(micro[2])
        return self.weights[micro[2].gather(1, src[:, 1:].flatten(1))].sum() / self.p ** 2

    def __call__(self, net, micro) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, pos, region = micro
        src = self.groups(region)  # (B, T', G)
        b, t2, g = src.shape
        at = src.flatten(1)  # (B, T' G)
        pos2 = pos.float().gather(1, at.unsqueeze(-1).expand(-1, -1, 2)).view(b, t2, g, 2).mean(2)
        logits = net(tokens, pos2[:, :-1], groups=src[:, :-1])  # (B, T'-1, V)
        targets = tokens.gather(1, at).view(b, t2, g)[:, 1:]  # (B, T'-1, G)
        reg = region.gather(1, at).view(b, t2, g)[:, 1:]
        return token_loss(logits, targets, self.weights[reg] / g, reg, self.z_loss)
