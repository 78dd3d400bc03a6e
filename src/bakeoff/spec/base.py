"""Building blocks every spec section shares: strict frozen models, names, Secret references."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SLUG = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class Strict(BaseModel):
    """A spec section: unknown keys are errors (a misspelt key is reported, not ignored); values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def slug(value: str) -> str:
    """``value`` if it is a Kubernetes-style name (lowercase letters, digits, '-'; at most 63)."""
    if not re.match(SLUG, value):
        raise ValueError("must be a lowercase name of letters, digits and '-' (at most 63, no leading or trailing '-')")
    return value


def positive_or_auto(v: Any, integer: bool) -> int | float | str:
    """``auto``, or a number > 0 (an integer where ``integer``); one plain error otherwise."""
    if v == "auto":
        return v
    kind = "integer" if integer else "number"
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or not v > 0:
        raise ValueError(f"must be a positive {kind} or 'auto'; got {v!r}")
    return v


class SecretRef(Strict):
    """One key of a Kubernetes Secret (only its name and key are in the spec, never a value)."""

    name: str = Field(min_length=1, description="the Secret's name, in the namespace the pipeline runs in")
    key: str = Field(min_length=1, description="the key inside the Secret whose value is used")
