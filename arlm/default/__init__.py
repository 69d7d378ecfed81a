"""The bundled default model: `model/` is an exported model (arlm.generation.modelcard) that `make train-default`
writes.

`arimg sample` without --ckpt samples from it; `arimg info` (or `arimg info default`) prints its model card.
"""
