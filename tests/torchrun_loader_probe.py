"""Run under torchrun by tests/test_loader.py: each rank reads its part of the shards once, with gloo."""

import json
import sys

import torch.distributed as dist

from arlm.config import DataConfig
from arlm.data.loader import ShardLoader

shards, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
keys = [b["key"] for b in ShardLoader(DataConfig(shards=shards, size="32", batch_size=4, shuffle_buffer=8))]
with open(f"{out}/rank{dist.get_rank()}.json", "w") as f:
    json.dump(keys, f)
dist.destroy_process_group()
