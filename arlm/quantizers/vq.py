"""Vector quantization with a learned codebook (van den Oord et al., 2017, "Neural Discrete Representation
Learning"), in the form that keeps codebooks alive:

- low-dimensional, l2-normalised codes (Yu et al., 2022, ViT-VQGAN; LlamaGen uses 8 dims): the nearest
  code is the one of highest cosine similarity, and every code stays on the sphere where the latents are;
- commitment loss beta * ||z - sg(e)||^2 plus the codebook loss ||sg(z) - e||^2 (eq. 3 of the VQ-VAE
  paper), or, with `ema=True`, codebook updates by exponential moving averages of the assigned latents
  (Appendix A.1 of the same paper) and no codebook loss;
- initialisation from the data (k-means on the first batch) instead of random codes;
- dead-code restart: a code whose moving-average usage falls below `dead_threshold` assignments per batch
  is moved onto a random latent of the current batch.

Under data parallelism (`sync`, handed in by the trainer) the codebook state stays the same on every
process and equals that of one process on the global batch: k-means runs on the latents of all processes,
the EMA statistics are summed over them, restarts draw from all their latents, and what is drawn (k-means
centroids, restart latents) is taken from the first process, so nondeterministic kernels cannot split them.

Shapes: z (B, d, H, W) -> quantized (B, d, H, W), indices (B, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arlm.quantizers.common import LOCAL, fp32, straight_through


def kmeans(x: torch.Tensor, k: int, iters: int = 10, l2norm: bool = True, generator=None) -> torch.Tensor:
    """k centroids of x (N, d), started from k random points (with repeats when N < k)."""
    idx = torch.randint(len(x), (k,), generator=generator, device=x.device) if len(x) < k else \
        torch.randperm(len(x), generator=generator, device=x.device)[:k]
    c = x[idx].clone()
    for _ in range(iters):
        assign = (x @ c.T if l2norm else -torch.cdist(x, c)).argmax(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
        if l2norm:
            c = F.normalize(c, dim=1)
    return c


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int = 8, beta: float = 0.25, l2norm: bool = True,
                 ema: bool = False, decay: float = 0.99, kmeans_init: bool = True, dead_threshold: float = 0.0) -> None:
        super().__init__()
        self.codebook_size, self.dim, self.beta, self.l2norm = codebook_size, dim, beta, l2norm
        self.ema, self.decay, self.dead_threshold = ema, decay, dead_threshold
        init = torch.randn(codebook_size, dim)
        self.codebook = nn.Parameter(F.normalize(init, dim=1) if l2norm else init, requires_grad=not ema)
        # moving-average assignments per batch (dead codes), and for EMA the summed latents per code
        self.register_buffer("usage", torch.ones(codebook_size))
        self.register_buffer("ema_sum", self.codebook.detach().clone())
        self.register_buffer("initialised", torch.tensor(not kmeans_init))
        self.sync = LOCAL  # collectives over data-parallel processes (arlm.parallel.Collectives)

    def _codes(self) -> torch.Tensor:
        return F.normalize(self.codebook, dim=1) if self.l2norm else self.codebook

    def _nearest(self, flat: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        # in row chunks: a (chunk, K) block of scores stays in cache, where the whole (N, K) matrix did not
        # (2x faster at K = 4096 on the CPU); the same indices either way
        codes = self._codes()
        if self.l2norm:  # on the sphere ||z - e||^2 = 2 - 2 z.e: the nearest code is the most similar
            return torch.cat([(part @ codes.T).argmax(1) for part in flat.split(chunk)])
        return torch.cat([torch.cdist(part, codes).argmin(1) for part in flat.split(chunk)])

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, indices: torch.Tensor) -> bool:
        """Init, EMA and restarts from a batch of latents and their nearest codes; True if the codes moved."""
        if not bool(self.initialised):
            codes = kmeans(self.sync.all_gather(flat), self.codebook_size, l2norm=self.l2norm)
            self.codebook.data.copy_(self.sync.broadcast(codes))
            self.ema_sum.copy_(self.codebook.data)
            self.initialised.fill_(True)
            return True
        counts = self.sync.all_sum(torch.bincount(indices, minlength=self.codebook_size).float())
        self.usage.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.ema:
            sums = self.sync.all_sum(torch.zeros_like(self.ema_sum).index_add_(0, indices, flat))
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            # the mean of the latents a code has been given, smoothed; l2norm puts it back on the sphere
            mean = self.ema_sum / self.usage.clamp(min=1e-5).unsqueeze(1)
            self.codebook.data.copy_(F.normalize(mean, dim=1) if self.l2norm else mean)
        dead = self.usage < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead:
            pool = self.sync.all_gather(flat)  # n_dead is the same on every process: all of them gather
            pick = self.sync.broadcast(pool[torch.randint(len(pool), (n_dead,), device=flat.device)])
            self.codebook.data[dead] = pick
            self.ema_sum[dead] = pick
            self.usage[dead] = 1.0  # a fresh code gets a grace period before it can be restarted again
        return self.ema or n_dead > 0

    @fp32
    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        b, d, h, w = z.shape
        if d != self.dim:
            raise ValueError(f"VQ over {self.dim} channels got {d}")
        flat = z.movedim(1, -1).reshape(-1, d)  # (B*H*W, d)
        if self.l2norm:
            flat = F.normalize(flat, dim=1)
        indices = self._nearest(flat.detach())
        if self.training and self._update(flat.detach(), indices):  # the codes moved: search again
            indices = self._nearest(flat.detach())
        e = self._codes()[indices]  # (B*H*W, d)
        losses = {"commit": self.beta * F.mse_loss(flat, e.detach())}
        if not self.ema:
            losses["codebook"] = F.mse_loss(e, flat.detach())
        quantized = straight_through(flat, e).reshape(b, h, w, d).movedim(-1, 1)
        return quantized, indices.reshape(b, h, w), losses

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, H, W) -> (B, d, H, W), the same values forward gives."""
        return self._codes()[indices].movedim(-1, 1)
