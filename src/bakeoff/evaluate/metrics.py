"""Small pure metric functions with their normalisation spelled out."""

from __future__ import annotations

import re
import unicodedata

_SPACE = re.compile(r"\s+")
_TRAILING = ".!?;:,"


def normalise_answer(text: str, case_sensitive: bool = False) -> str:
    """NFKC, lower case (unless ``case_sensitive``), whitespace collapsed, trailing sentence punctuation
    and wrapping quotes removed."""
    text = unicodedata.normalize("NFKC", text).strip()
    text = text if case_sensitive else text.lower()
    text = _SPACE.sub(" ", text)
    text = text.rstrip(_TRAILING).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def exact_match(reference: str, prediction: str, case_sensitive: bool = False) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    same = normalise_answer(reference, case_sensitive) == normalise_answer(prediction, case_sensitive)
    return 1.0 if same else 0.0
