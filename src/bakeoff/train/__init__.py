"""The finetune stage: ``launch.finetune_arm`` decides where an arm trains (hosted API, Kubeflow Trainer
job, torchrun, this process); ``finetune`` trains in this process; ``worker`` is the entry of the
processes the stage starts itself."""

from bakeoff.artifacts import TrainResult
from bakeoff.train.finetune import finetune

__all__ = ["TrainResult", "finetune"]
