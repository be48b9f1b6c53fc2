"""Models: the KARL tokenizer and its quantizers (torch only)."""

from .karl import KARLTokenizer, Latents, Tokens, lengths_from_halting, prefix_mask
from .quantizers import ContinuousQuantizer, FSQQuantizer, Quantized

__all__ = ["KARLTokenizer", "Latents", "Tokens", "Quantized", "FSQQuantizer", "ContinuousQuantizer",
           "lengths_from_halting", "prefix_mask"]
