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
TOKENIZER_DIR = "tokenizer"  # an exported model (arlm.generation.modelcard) carries its image tokenizer here


def vocab_json(vocab: Vocab, run: Path) -> str:
    """`vocab` as the run directory `run` and its checkpoints record it: the tokenizer's path relative to the
    run, so that a run moved with its tokenizer, or used from another folder, still finds it."""
    if vocab.tokenizer:
        vocab = dataclasses.replace(vocab, tokenizer=checkpoint.record_path(vocab.tokenizer, run))
    return vocab.to_json()


def read_vocab(ckpt: Path) -> Vocab:
    """The vocabulary of a checkpoint; its tokenizer is the one in `tokenizer/` beside the weights when the
    checkpoint carries one (an exported model), else the path its run recorded (`vocab_json`), where found."""
    try:
        vocab = Vocab.from_json((ckpt / VOCAB_FILE).read_text())
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise checkpoint.CheckpointError(f"corrupt checkpoint {ckpt}: {VOCAB_FILE}: {e}") from None
    if (ckpt / TOKENIZER_DIR).is_dir():
        return dataclasses.replace(vocab, tokenizer=str(ckpt / TOKENIZER_DIR))
    found = checkpoint.resolve_recorded(vocab.tokenizer, checkpoint.run_of(ckpt)) if vocab.tokenizer else None
    return dataclasses.replace(vocab, tokenizer=str(found)) if found is not None else vocab


def check_tokenizer(ckpt: Path, vocab: Vocab) -> None:
    """A one-line CheckpointError when the image tokenizer `vocab` names (as read by `read_vocab`) is not there,
    naming the file that recorded it."""
    if not vocab.tokenizer or not Path(vocab.tokenizer).exists():
        raise checkpoint.CheckpointError(
            f"no such run or checkpoint: {vocab.tokenizer or '(none)'}, the image tokenizer that "
            f"{ckpt / VOCAB_FILE} records (against {checkpoint.run_of(ckpt)} and the working folder): run where "
            f"the model was trained, or `arimg export --ckpt RUN --out DIR` for a model that carries its tokenizer")


def load_model(path, device: str = "auto", ema: bool = True):
    """(model in eval mode, vocab, run config) of a transformer run or checkpoint directory; the EMA
    weights when the run kept them."""
    from arlm.config import TrainTransformerConfig
    from arlm.device import resolve_device

    ckpt = checkpoint.resolve(path, KIND)
    cfg = checkpoint.load_config(ckpt, TrainTransformerConfig)
    vocab = read_vocab(ckpt)
    check_tokenizer(ckpt, vocab)
    model = Transformer(cfg.model, vocab.padded_size)
    checkpoint.load_into(model, checkpoint.load_reader_weights(ckpt, ema), ckpt)
    return model.to(resolve_device(device)).eval(), vocab, cfg
