"""Scale-out, applied from outside the model (torchtitan's parallelize): torchrun's process group, DDP or
FSDP2, torch.compile, and full (unsharded) state dicts for checkpoints.

One process: nothing is wrapped. Under torchrun (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA, one device per
local rank. `ddp` replicates the model and all-reduces gradients; `fsdp` shards parameters, gradients and
optimizer state with FSDP2's `fully_shard`, once per block and once at the root (which holds the embedding
and the head, tied or not). Checkpoints always hold full tensors, so a run saved under one layout loads
under any other, and in one process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from arlm.errors import ConfigError

PARALLEL = ("ddp", "fsdp")


def init(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this process's device); starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1, device
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # long timeout: rank 0 alone writes pictures and checkpoints while the others wait
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=60))
    if dist.get_rank() != 0:  # one voice on stderr: the other ranks log warnings and errors only
        import logging

        from arlm.log import log

        log.setLevel(logging.WARNING)
    return dist.get_rank(), dist.get_world_size(), device


def is_main() -> bool:
    """Rank 0, or the only process (also after the process group has ended)."""
    return int(os.environ.get("RANK", 0)) == 0


@contextlib.contextmanager
def launched(device: torch.device, writes: str | os.PathLike | None = None) -> Iterator[tuple[int, int, torch.device]]:
    """(rank, world size, device) for the block of a command: the process group up under torchrun, and down
    after it; rank 0 alone writes, so it alone holds the lock of the folder the command `writes` (arlm.lock)."""
    from arlm import lock

    rank, world, device = init(device)
    try:
        with lock.hold(writes) if writes is not None and rank == 0 else contextlib.nullcontext():
            yield rank, world, device
    finally:
        shutdown()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes (in place); a no-op in one process."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj) -> list:
    """Every process's picklable `obj`, in rank order; [obj] in one process."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj) -> list | None:
    """Every process's picklable `obj` in rank order on rank 0, None on the others; [obj] in one process.
    Work shared out by `share` comes back in its one-process order through `unshare`."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def share(items: list, rank: int, world: int) -> list:
    """This process's part of a list of jobs: every world-th item from its rank's."""
    return items[rank::world]


def unshare(parts: list[list]) -> list:
    """The gathered results of `share`d jobs (one list per rank, in rank order) in the order of the jobs."""
    world = len(parts)
    return [parts[k % world][k // world] for k in range(sum(map(len, parts)))]


class Collectives:
    """Sums, gathers and broadcasts over the processes, for state that must stay the same on every one of
    them (a quantizer's codebook, code usage): the methods of arlm.quantizers.common.Local, each the identity
    in one process. Every process calls each method with a tensor of the same shape."""

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        return all_sum(t)

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        if not dist.is_initialized():
            return t
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        if dist.is_initialized():
            t = t.contiguous()
            dist.broadcast(t, src=0)
        return t

    def all_mean(self, t: torch.Tensor) -> torch.Tensor:
        if not dist.is_initialized():
            return t
        from torch.distributed.nn.functional import all_reduce

        # the backward all-reduces the gradient too: each process's t gets the gradient of every copy of the
        # mean, and DDP's averaging over processes then makes it the one-process gradient of the global mean
        return all_reduce(t) / dist.get_world_size()


def replicate(module: nn.Module, world: int) -> nn.Module:
    """DDP for a model trained whole on every process (the tokenizer, its discriminator); `module` itself when
    world == 1. Buffers are not broadcast at every forward: they are either constant or kept in step by their
    owner (a quantizer's codebook state, through Collectives)."""
    if world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, forward_sync_buffers=False)


@contextlib.contextmanager
def mean_grad(t: torch.Tensor) -> Iterator[None]:
    """Inside, a gradient computed for the leaf `t` (torch.autograd.grad included, which DDP does not
    average) is its mean over processes: the gradient of the global batch's mean loss."""
    if not dist.is_initialized():
        yield
        return
    handle = t.register_hook(lambda g: all_sum(g.clone()) / dist.get_world_size())
    try:
        yield
    finally:
        handle.remove()


def parallelize(model: nn.Module, how: str, compile: bool, world: int) -> nn.Module:
    """The module to train: compiled per block, then DDP-wrapped or FSDP2-sharded (in place) when world > 1.
    The returned module is called for training; `model` stays the module whose weights are saved."""
    if how not in PARALLEL:
        raise ConfigError(f"trainer.parallel must be one of {', '.join(PARALLEL)}, got {how!r}")
    if compile:
        for block in model.blocks:  # per block: one graph reused by every layer, fast to compile
            block.compile()
    if world == 1:
        return model
    if how == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def _is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def shard_like(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full tensors keyed like `model.state_dict()` (an EMA's shadow weights), sharded as the model's own
    entries are once FSDP2 has sharded it; unchanged in one process or under DDP. Every process passes the
    same full tensors."""
    if not _is_sharded(model):
        return tensors
    from torch.distributed.tensor import DTensor, distribute_tensor

    own = model.state_dict()
    return {k: distribute_tensor(v.to(own[k].device), own[k].device_mesh, own[k].placements)
            if isinstance(own[k], DTensor) else v for k, v in tensors.items()}


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full weights on the CPU (every process takes part when sharded)."""
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimizer's state as plain data: per-parameter-index as PyTorch keeps it (one process, DDP), or
    full tensors keyed by parameter name when sharded (FSDP2)."""
    if not _is_sharded(model):
        return {"layout": "plain", "state": opt.state_dict()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    sd = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    return {"layout": "fsdp", "state": _to_cpu(sd)}


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, saved: dict) -> None:
    layout = "fsdp" if _is_sharded(model) else "plain"
    if saved["layout"] != layout:
        raise ConfigError(f"the checkpoint's optimizer state was saved {'sharded' if layout == 'plain' else 'unsharded'}"
                          f": resume with the trainer.parallel and process count it was saved with")
    if layout == "plain":
        opt.load_state_dict(saved["state"])
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, saved["state"], options=StateDictOptions(full_state_dict=True))


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
