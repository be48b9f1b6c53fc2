"""Training: objectives and the one training loop."""

from .objective import KARLObjective, LossOutput
from .trainer import train

__all__ = ["KARLObjective", "LossOutput", "train"]
