"""kolmotok: single-pass adaptive image tokenization (KARL, arXiv 2507.07995).

>>> import kolmotok
>>> tok = kolmotok.load()
>>> enc = tok.encode(images, epsilon=0.05)   # one encoder pass
>>> recon = tok.decode(enc)                  # one decoder pass
>>> table = kolmotok.read_tokens("tokens/")  # the output of `kolmotok tokenize`
>>> batches = kolmotok.length_batches(enc.lengths, batch_size=128)  # a downstream model's batches
"""

from .api import Encoding, Tokenizer, load
from .batching import length_batches
from .data.images import ImageLoadError
from .tokenize import read_tokens

__version__ = "0.1.0"
__all__ = ["load", "Tokenizer", "Encoding", "ImageLoadError", "read_tokens", "length_batches", "__version__"]
