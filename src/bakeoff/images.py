"""Container image references, kept in one place.

Each stage has its own image, ``{registry}/bakeoff-{stage}:{tag}``. The tag follows the package
version; ``BAKEOFF_REGISTRY`` and ``BAKEOFF_IMAGE_TAG`` override registry and tag (read when the
components are imported, i.e. at compile time).
"""

from __future__ import annotations

import os

from bakeoff import __version__

STAGES = ("prepare", "finetune", "generate", "evaluate", "report")
# The GPU generate image with vLLM (its own torch pin: images/build.sh); the GPU generate tasks run in it.
IMAGES = (*STAGES, "generate-vllm")
IMAGE_USER = 10001  # the non-root user every stage image runs as (images/Dockerfile)
DEFAULT_REGISTRY = "localhost:5000/bakeoff"


def image_for(stage: str) -> str:
    """The image reference of ``stage``."""
    if stage not in IMAGES:
        raise ValueError(f"unknown image {stage!r}; images are {', '.join(IMAGES)}")
    registry = os.environ.get("BAKEOFF_REGISTRY", DEFAULT_REGISTRY).rstrip("/")
    tag = os.environ.get("BAKEOFF_IMAGE_TAG", __version__)
    return f"{registry}/bakeoff-{stage}:{tag}"
