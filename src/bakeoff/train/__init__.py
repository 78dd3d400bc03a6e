"""The finetune stage."""

from bakeoff.train.finetune import TrainResult, finetune

__all__ = ["TrainResult", "finetune"]
