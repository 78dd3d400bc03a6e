"""Thin KFP v2 components, one per stage: artifacts -> paths, call the stage function, log Metrics.

Each body imports ``bakeoff`` inside the function: KFP ships the function's source to the stage's
image, where the package is installed (``install_kfp_package=False``: the image has kfp too).
"""

from bakeoff_components.stages import (
    evaluate,
    finetune,
    generate,
    generate_vllm,
    pairwise_judge,
    prepare_data,
    report,
)

__all__ = ["evaluate", "finetune", "generate", "generate_vllm", "pairwise_judge", "prepare_data", "report"]
