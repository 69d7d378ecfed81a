"""The sampler's errors as training data for a decoder: RobusTok's post-training (Qiu et al., 2025). For a share of
each batch's images the decoder sees, instead of the image's own codes, those the transformer draws for them
teacher-forced (each code drawn after the caption and the image's true codes before it, as the sampler draws),
and learns to draw the image from them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from arlm import checkpoint
from arlm.config import SamplingConfig
from arlm.generation.modelcard import same_codes
from arlm.log import log
from arlm.transformer.ckpt import load_model
from arlm.transformer.sample import Settings, teacher_forced


def resampler(transformer: str, share: float, sampling: SamplingConfig, frozen: Path, device: torch.device,
              precision: str) -> Callable[[list[str], torch.Tensor], torch.Tensor]:
    """(captions, indices) -> the codes the decoder sees: the teacher-forced draws of the run `transformer` for
    a `share` of the images, their own codes for the rest. The transformer must have been trained on the tokens
    of `frozen`, the tokenizer checkpoint whose encoder and codebook the decoder's run keeps."""
    model, vocab, _ = load_model(transformer, str(device))
    same_codes(checkpoint.resolve(vocab.tokenizer, "tokenizer"), frozen)
    settings = Settings.from_config(sampling)
    settings.check()
    log.info("the decoder sees the draws of %s for %.0f%% of the images", transformer, 100 * share)

    def draw(captions: list[str], indices: torch.Tensor) -> torch.Tensor:
        drawn = teacher_forced(model, vocab, captions, indices, settings, precision)
        keep = torch.rand(len(captions), device=indices.device) >= share
        return torch.where(keep[:, None, None], indices, drawn)

    return draw
