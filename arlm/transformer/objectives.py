"""What a transformer stage minimises: the objective the one training loop (arlm.transformer.train) calls.

An objective turns one micro-batch into (loss sum, statistics): the loss is a *sum* over the micro-batch,
which the loop divides by the global batch's normaliser (`norm`, summed over micro-batches and processes),
so gradient accumulation and N processes give the gradient of one big batch; the statistics are a fixed
vector of sums that the loop adds up between log steps and turns into named metrics (`metrics`).

- `NextToken`: pretrain and sft, weighted next-token cross-entropy (+ z-loss).
- the preference objective of `arimg dpo` lives in arlm.transformer.dpo.

`sequence_logps` is the per-sequence log-likelihood of the visual tokens that preference data and DPO need
(the part TRL's `get_batch_logps` plays).
"""

from __future__ import annotations

import torch

from arlm.config import TrainTransformerConfig
from arlm.transformer.sequence import END_R, PAD_R, TEXT_R, VISUAL_R


def region_weights(cfg: TrainTransformerConfig, device: torch.device) -> torch.Tensor:
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
    [weighted ce, weight, visual ce, visual count]. One logsumexp serves both the cross-entropy and the z-loss."""
    logits = logits.float()
    lse = logits.logsumexp(-1)  # (B, T)
    ce = lse - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    obj = (ce * weights).sum()
    if z_loss > 0:
        obj = obj + z_loss * (lse.pow(2) * (weights > 0)).sum()
    vis = region == VISUAL_R
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

    def __init__(self, cfg: TrainTransformerConfig, device: torch.device) -> None:
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
