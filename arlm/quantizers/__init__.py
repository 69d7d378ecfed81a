"""Quantizers, one file each; every one maps z (B, d, H, W) to (quantized, indices (B, H, W), losses) in fp32,
and `decode(indices)` gives back exactly the quantized values."""

from arlm.quantizers.fsq import FSQ
from arlm.quantizers.lfq import LFQ
from arlm.quantizers.vq import VectorQuantizer

__all__ = ["FSQ", "LFQ", "VectorQuantizer"]
