"""The transformer's optimizers (trainer.optimizer): AdamW, or Muon on the blocks' matrices with AdamW on the rest.

Muon (Jordan et al., 2024, the optimizer of the nanoGPT speedrun; Liu et al., "Muon is Scalable for LLM
Training", 2025): each 2-D weight of the blocks moves by its momentum (Nesterov) made orthogonal, U V^T of its
singular value decomposition U S V^T, approximated by five Newton-Schulz iterations of an odd polynomial
whose coefficients push every singular value into about [0.7, 1.2] within those five steps (not to exactly
1: it trades precision for speed, and training does not need more). The update of an m x n matrix is scaled
by sqrt(max(1, m / n)), as in Keller Jordan's implementation, so that tall matrices move as far per entry as
square ones. Embeddings, the head and the norms are no matrices of a linear map between hidden states:
AdamW at trainer.lr keeps them, as in the speedrun and in Moonlight.

Under FSDP2 each process holds a slice of every matrix: the momentum is gathered into the whole matrix,
orthogonalized in every process alike, and each process keeps its own slice of the result.
"""

from __future__ import annotations

import torch
from torch import nn

from arlm.config import TrainerConfig

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Jordan's quintic: steepest slope at 0 for convergence in 5 steps
NS_STEPS = 5


def orthogonalize(g: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> torch.Tensor:
    """An approximation of U V^T for g = U S V^T (2-D), in g's dtype: Newton-Schulz on X = g / |g|_F, whose
    singular values all lie in (0, 1], iterating X <- a X + (b A + c A^2) X with A = X X^T on the wide side."""
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (x.norm() + eps)
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return (x.T if tall else x).to(g.dtype)


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`full` sliced as `param` is (the local shard of an FSDP2 DTensor), or as it is."""
    if not hasattr(param, "device_mesh"):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer over two kinds of parameter group: `muon: True` (orthogonalized Nesterov momentum, decoupled
    weight decay) and `muon: False` (AdamW, PyTorch's own update). One class, so that the Trainer's schedule,
    checkpoints and FSDP2's optimizer state see a single optimizer; each group's lr is the schedule's times its
    `lr_scale`."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float], momentum: float,
                 eps: float = 1e-8) -> None:
        super().__init__(groups, dict(lr=lr, betas=betas, momentum=momentum, eps=eps, weight_decay=0.0,
                                      lr_scale=1.0, muon=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["muon"]:
                self._muon(group, params)
            elif params:
                self._adamw(group, params)

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        for p in params:
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mu)
            g = p.grad.lerp(buf, mu)  # Nesterov: the gradient pushed further along the momentum
            full = _full(g)
            update = orthogonalize(full) * max(1.0, full.shape[0] / full.shape[1]) ** 0.5
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(_like(update, p), alpha=-lr)

    def _adamw(self, group: dict, params: list[torch.Tensor]) -> None:
        from torch.optim.adamw import adamw

        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        adamw(params, [p.grad for p in params], [self.state[p]["exp_avg"] for p in params],
              [self.state[p]["exp_avg_sq"] for p in params], [], [self.state[p]["step"] for p in params],
              foreach=False, amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
              weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """A 2-D weight of a block (attention's qkv and output, the MLP's): what Muon takes."""
    return p.dim() == 2 and name.startswith("blocks.")


def param_groups(model: nn.Module, tc: TrainerConfig) -> list[dict]:
    """AdamW: decay on matmul weights only (norms, biases and embeddings, the tied head included, keep theirs).
    Muon: the blocks' matrices (decayed) under Muon at muon_lr, the rest under AdamW at lr, the head decayed
    when it is not tied to the embedding."""
    named = list(model.named_parameters())
    if tc.optimizer == "adamw":
        decay = [p for n, p in named if p.dim() >= 2 and not n.startswith("embed")]
        keep = [p for n, p in named if not (p.dim() >= 2 and not n.startswith("embed"))]
        return [{"params": decay, "weight_decay": tc.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    hidden = [p for n, p in named if is_hidden_matrix(n, p)]
    head = [p for n, p in named if not is_hidden_matrix(n, p) and p.dim() >= 2 and not n.startswith("embed")]
    rest = [p for n, p in named if not is_hidden_matrix(n, p) and not (p.dim() >= 2 and not n.startswith("embed"))]
    return [{"params": head, "weight_decay": tc.weight_decay, "muon": False},
            {"params": rest, "weight_decay": 0.0, "muon": False},
            {"params": hidden, "weight_decay": tc.weight_decay, "muon": True, "lr_scale": tc.muon_lr / tc.lr}]


def make_optimizer(model: nn.Module, tc: TrainerConfig, device: torch.device) -> torch.optim.Optimizer:
    """trainer.optimizer over `model`'s parameters, at the schedule's first lr (set by the Trainer each step)."""
    groups = param_groups(model, tc)
    if tc.optimizer == "muon":  # the head's group is empty when it is tied to the embedding
        return MuonAdamW([g for g in groups if g["params"]], lr=tc.lr, betas=tuple(tc.betas), momentum=tc.muon_momentum)
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tuple(tc.betas), fused=device.type == "cuda")
