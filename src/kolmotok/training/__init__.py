"""Training: objectives and the one training loop."""

from .objective import KARLObjective, LossOutput, build_objective
from .trainer import train

__all__ = ["KARLObjective", "LossOutput", "build_objective", "train"]
