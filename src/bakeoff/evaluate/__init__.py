"""The evaluate stage: exact match, the LLM judge, RAGAS, SQL execution and meaning-representation accuracy,
with intervals and counted failures."""

from bakeoff.evaluate.evaluate import evaluate

__all__ = ["evaluate"]
