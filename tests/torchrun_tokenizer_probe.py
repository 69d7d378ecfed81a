"""Run by tests/test_tokenizer_ddp.py, under torchrun or alone: a VQ codebook with k-means init, EMA updates
and dead-code restarts, fed each process's part of the same global batches; writes OUT/rankR.pt with the
quantizer's state after every step and how many codes each step restarted."""

import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from arlm.parallel import Collectives
from arlm.quantizers import VectorQuantizer

out = sys.argv[1]
if int(os.environ.get("WORLD_SIZE", 1)) > 1:
    dist.init_process_group("gloo")
rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
torch.manual_seed(0)  # the same initial codes and random draws in every process
vq = VectorQuantizer(64, dim=8, ema=True, decay=0.5, dead_threshold=1.0).train()
vq.sync = Collectives()
data = torch.Generator().manual_seed(1)
steps = []
for step in range(5):
    z = torch.randn(8, 8, 4, 4, generator=data)  # (B, d, h, w): the global batch
    z[:, 0] += 3.0  # latents crowd one side of the sphere, so codes die
    vq(z.chunk(world)[rank])
    flat = F.normalize(z.movedim(1, -1).reshape(-1, 8), dim=1)
    restarted = int((vq.codebook.detach().unsqueeze(1) == flat).all(-1).any(1).sum())  # codes set to a latent
    steps.append({"state": {k: v.clone() for k, v in vq.state_dict().items()}, "restarted": restarted})
torch.save(steps, f"{out}/rank{rank}.pt")
if dist.is_initialized():
    dist.destroy_process_group()
