"""Small pure metric functions with their normalisation spelled out.

:data:`NORMALISATION` says, one sentence per metric, what each score normalises before comparing, so the
report can print it beside the numbers.
"""

from __future__ import annotations

import re
import unicodedata

_SPACE = re.compile(r"\s+")
_TRAILING = ".!?;:,"

# The whole answer is one fenced block: an opening fence of 3+ backticks or tildes with an optional info string
# (a language tag such as ``sql``) on its own line, the body, and a closing fence of the same characters (at
# least as long) on its own line or right after the body; whitespace around the block is allowed, prose is not.
_FENCE = re.compile(r"\A\s*(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*?)[ \t]*\n(?P<body>.*?)\n?[ \t]*(?P=fence)"
                    r"[`~]*[ \t]*\s*\Z", re.DOTALL)
_FENCE_LINE = re.compile(r"^[ \t]*(`{3,}|~{3,})", re.MULTILINE)

NORMALISATION: dict[str, str] = {
    "strip_code_fence": (
        "An answer that is exactly one Markdown code block (``` or ~~~ fences on their own lines, an optional "
        "language tag such as sql, whitespace around it allowed, no prose around it) is replaced by the block's "
        "content; any other answer is scored as written."
    ),
    "exact_match": (
        "Reference and answer are compared after Unicode NFKC, lower-casing (unless exact_match.case_sensitive), "
        "collapsing whitespace, dropping trailing sentence punctuation (.!?;:,) and one pair of wrapping quotes "
        "or backticks; no code fence is stripped."
    ),
    "exact_match_sql": (
        "SQL is compared after stripping a code fence, folding case outside string literals only ('Bob' and "
        "\"Bob\" keep their case), collapsing whitespace outside literals and ignoring trailing semicolons."
    ),
    "sql_execution": (
        "A code fence around the predicted SQL is stripped, then only its first statement runs (read-only, time, "
        "size and memory limited) and its result is compared with the gold query's as a multiset of rows "
        "(ordered when the gold query has a top-level ORDER BY), columns matched by permutation, 1 == 1.0."
    ),
    "mr_match": (
        "A code fence around the predicted meaning representation is stripped; act and (attribute, value) slots "
        "must match, slot order ignored, whitespace around tokens ignored, values case-sensitive (slot "
        "precision, recall and F1 use the same parse)."
    ),
}
"""One sentence per metric (and for the fence stripping itself) on how answers are normalised; keys are the
metric names, plus ``strip_code_fence`` and ``exact_match_sql``."""


def strip_code_fence(text: str) -> str:
    """The content of ``text`` when the whole of it is one Markdown fenced code block, else ``text`` unchanged.

    Accepted: optional whitespace, an opening fence of three or more backticks (or tildes) followed by an
    optional info string (``sql``, ``SQL``, ``sqlite``...) on the same line, the body on the following lines, a
    closing fence of the same character at least as long, on its own line (or right after the last line's text),
    optional whitespace. The content is
    returned stripped of surrounding whitespace. Not accepted (returned unchanged): prose before or after the
    block, two or more blocks, an unclosed fence, a one-line block (`````SELECT 1`````), single backticks.
    """
    m = _FENCE.match(text)
    if m is None:
        return text
    body = m.group("body")
    if _FENCE_LINE.search(body):  # a fence line inside: several blocks, not one
        return text
    return body.strip()


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
