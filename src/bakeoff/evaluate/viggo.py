"""ViGGO meaning representations: parsing, exact match and slot precision/recall/F1.

A meaning representation (MR) reads ``act(attr[value], attr[value], ...)``, for example
``inform(name[Portal 2], genres[puzzle, platformer], rating[excellent])``. Normalisation, all of it:

* whitespace around the whole text, around the act, attributes, brackets and separating commas is ignored;
* values are trimmed and otherwise kept as written: case-sensitive, commas inside a value are part of it
  (``genres[puzzle, platformer]`` is one slot), nested *balanced* square brackets are allowed;
* attribute order is ignored, repeats are kept (the slots are a multiset of ``(attribute, value)`` pairs);
* an empty value (``platforms[]``) is a slot with value ``""``; an act with no slots (``request()``) is allowed.

Malformed text (no or empty act, no parentheses, unbalanced brackets, a missing or trailing comma, trailing
garbage) does not parse. A malformed prediction is no match; a malformed gold raises EvaluationError.

A prediction that is one Markdown code block (```` ``` ... ``` ````, :func:`~bakeoff.evaluate.metrics.strip_code_fence`)
is scored on the block's content; ``strip_fences=False`` scores the raw text (the raw score, kept beside it).
"""

from __future__ import annotations

import re
from collections import Counter

from bakeoff.errors import EvaluationError
from bakeoff.evaluate.metrics import strip_code_fence

_ACT = re.compile(r"\s*([A-Za-z_]\w*)\s*\(")
_ATTR = re.compile(r"\s*([A-Za-z_]\w*)\s*\[")
_SEP = re.compile(r"\s*,")
_CLOSE = re.compile(r"\s*\)\s*\Z")


def _value_end(text: str, start: int) -> int | None:
    """Index of the ``]`` closing the bracket opened just before ``start``, or None when unbalanced."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "[":
            depth += 1
        elif text[i] == "]":
            depth -= 1
            if depth == 0:
                return i
    return None


def parse_mr(text: str) -> tuple[str, Counter] | None:
    """The dialogue act and the multiset of ``(attribute, value)`` pairs of an MR, or None when malformed."""
    text = text.strip()
    m = _ACT.match(text)
    if not m:
        return None
    act, pos = m.group(1), m.end()
    slots: Counter = Counter()
    if _CLOSE.match(text, pos):
        return act, slots
    while True:
        m = _ATTR.match(text, pos)
        if not m:
            return None
        end = _value_end(text, m.end())
        if end is None:
            return None
        slots[(m.group(1), text[m.end() : end].strip())] += 1
        pos = end + 1
        if _CLOSE.match(text, pos):
            return act, slots
        sep = _SEP.match(text, pos)
        if not sep:
            return None
        pos = sep.end()


def _parse_gold(gold: str) -> tuple[str, Counter]:
    parsed = parse_mr(gold)
    if parsed is None:
        raise EvaluationError(f"malformed gold meaning representation: {gold!r}")
    return parsed


def mr_match(gold: str, pred: str, strip_fences: bool = True) -> bool:
    """True when ``pred`` has the same act and the same multiset of slots as ``gold`` (malformed pred: False).

    With ``strip_fences`` a prediction that is one Markdown code block is parsed without its fence.
    """
    gold_mr = _parse_gold(gold)
    pred_mr = parse_mr(strip_code_fence(pred) if strip_fences else pred)
    return pred_mr is not None and pred_mr == gold_mr


def slot_scores(gold: str, pred: str, strip_fences: bool = True) -> tuple[float, float, float]:
    """Precision, recall and F1 of the predicted ``(attribute, value)`` multiset against the gold one.

    The act is not a slot. True positives are the multiset intersection. Empty sets: precision with no
    predicted slots, and recall with no gold slots, are 1.0 when the other side is empty too and 0.0
    otherwise (so two empty MRs score (1, 1, 1)); F1 is 0.0 when precision + recall is 0. A malformed
    prediction scores (0, 0, 0); a malformed gold raises EvaluationError. ``strip_fences`` as in :func:`mr_match`.
    """
    gold_slots = _parse_gold(gold)[1]
    parsed = parse_mr(strip_code_fence(pred) if strip_fences else pred)
    if parsed is None:
        return 0.0, 0.0, 0.0
    pred_slots = parsed[1]
    n_gold, n_pred = sum(gold_slots.values()), sum(pred_slots.values())
    hits = sum((gold_slots & pred_slots).values())
    precision = hits / n_pred if n_pred else (1.0 if n_gold == 0 else 0.0)
    recall = hits / n_gold if n_gold else (1.0 if n_pred == 0 else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1
