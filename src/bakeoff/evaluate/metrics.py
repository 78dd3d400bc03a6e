"""Small pure metric functions with their normalisation spelled out."""

from __future__ import annotations

import re
import unicodedata

_SPACE = re.compile(r"\s+")
_TRAILING = ".!?;:,"


def normalise_answer(text: str) -> str:
    """NFKC, lower case, whitespace collapsed, trailing sentence punctuation and wrapping quotes removed."""
    text = unicodedata.normalize("NFKC", text).strip().lower()
    text = _SPACE.sub(" ", text)
    text = text.rstrip(_TRAILING).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def exact_match(reference: str, prediction: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return 1.0 if normalise_answer(reference) == normalise_answer(prediction) else 0.0
