"""kolmotok: single-pass adaptive image tokenization (KARL, arXiv 2507.07995).

>>> import kolmotok
>>> tok = kolmotok.load()
>>> enc = tok.encode(images, epsilon=0.05)   # one encoder pass
>>> recon = tok.decode(enc)                  # one decoder pass
"""

from .api import Encoding, Tokenizer, load
from .data.images import ImageLoadError

__version__ = "0.1.0"
__all__ = ["load", "Tokenizer", "Encoding", "ImageLoadError", "__version__"]
