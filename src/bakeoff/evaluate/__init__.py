"""The evaluate stage: exact match and the LLM judge, with intervals and counted failures."""

from bakeoff.evaluate.evaluate import evaluate

__all__ = ["evaluate"]
