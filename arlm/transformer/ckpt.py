"""The transformer's checkpoint format: what a transformer run directory holds beside arlm.checkpoint's
generic layout (the `KIND` tag and the vocabulary, `vocab.json`), and the one way to load a model from it.

Every stage that writes transformer checkpoints (pretrain, sft, dpo) and every reader (the sampler, the
evaluations, make-prefs) goes through here, so neither side imports the other.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from arlm import checkpoint
from arlm.transformer.model import Transformer
from arlm.transformer.sequence import Vocab

KIND = "transformer"
VOCAB_FILE = "vocab.json"
TOKENIZER_DIR = "tokenizer"  # an exported model (arlm.modelcard) carries its image tokenizer here


def read_vocab(ckpt: Path) -> Vocab:
    """The vocabulary of a checkpoint; its tokenizer is the one in `tokenizer/` beside the weights when the
    checkpoint carries one (an exported model), else the path the run recorded."""
    try:
        vocab = Vocab.from_json((ckpt / VOCAB_FILE).read_text())
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise checkpoint.CheckpointError(f"corrupt checkpoint {ckpt}: {VOCAB_FILE}: {e}") from None
    if (ckpt / TOKENIZER_DIR).is_dir():
        vocab = dataclasses.replace(vocab, tokenizer=str(ckpt / TOKENIZER_DIR))
    return vocab


def load_model(path, device: str = "auto", ema: bool = True):
    """(model in eval mode, vocab, run config) of a transformer run or checkpoint directory; the EMA
    weights when the run kept them."""
    from arlm.config import TrainTransformerConfig
    from arlm.device import resolve_device

    ckpt = checkpoint.resolve(path, KIND)
    cfg = checkpoint.load_config(ckpt, TrainTransformerConfig)
    vocab = read_vocab(ckpt)
    model = Transformer(cfg.model, vocab.padded_size)
    checkpoint.load_into(model, checkpoint.load_reader_weights(ckpt, ema), ckpt)
    return model.to(resolve_device(device)).eval(), vocab, cfg
