"""Training: objectives and the one training loop."""

from .objective import KARLObjective, LossOutput, per_image_l1
from .trainer import train

__all__ = ["KARLObjective", "LossOutput", "per_image_l1", "train"]
