"""Building blocks every spec section shares: strict frozen models, names, Secret references, number bounds."""

from __future__ import annotations

import math
import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

SLUG = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
# numpy's legacy seeding (which transformers.set_seed and the stages call) takes 0 .. 2**32 - 1 only
MAX_SEED = 2**32 - 1
# Rows per device per step (or prompts per generation batch). No fine-tune or generation of a causal LM comes
# near it (at max_seq_length 1024 it is 67M tokens in one step on one device); a larger value is a typo, and one
# past 2**63 would only fail inside torch with an overflow.
MAX_BATCH_SIZE = 65_536


def _leaf_types(annotation: Any) -> set[Any]:
    """The types a field annotation admits, through unions, Optional and Annotated (``Literal`` counts as one)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _leaf_types(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return set().union(*(_leaf_types(arg) for arg in get_args(annotation)))
    return {origin or annotation}


class Strict(BaseModel):
    """A spec section: unknown keys are errors (a misspelt key is reported, not ignored); values are frozen.

    Every number must be finite (``.nan`` and ``.inf`` are refused), and a boolean is never taken for a number:
    pydantic's lax mode would read ``batch_size: true`` (or YAML's ``yes``) as 1.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, bool) and info.field_name in cls.model_fields:
            admits = _leaf_types(cls.model_fields[info.field_name].annotation)
            if bool not in admits and admits & {int, float}:
                raise ValueError(f"must be a number, not a boolean ({str(v).lower()})")
        return v


def slug(value: str) -> str:
    """``value`` if it is a Kubernetes-style name (lowercase letters, digits, '-'; at most 63)."""
    if not re.match(SLUG, value):
        raise ValueError("must be a lowercase name of letters, digits and '-' (at most 63, no leading or trailing '-')")
    return value


def positive_or_auto(v: Any, integer: bool, maximum: int | None = None) -> int | float | str:
    """``auto``, or a finite number > 0 (an integer where ``integer``; at most ``maximum``); one plain error
    otherwise."""
    if v == "auto":
        return v
    kind = "integer" if integer else "number"
    if (isinstance(v, bool) or not isinstance(v, int if integer else (int, float))
            or (isinstance(v, float) and not math.isfinite(v)) or not v > 0):
        raise ValueError(f"must be a positive {kind} or 'auto'; got {v!r}")
    if maximum is not None and v > maximum:
        raise ValueError(f"must be at most {maximum} or 'auto'; got {v!r}")
    return v


class SecretRef(Strict):
    """One key of a Kubernetes Secret (only its name and key are in the spec, never a value)."""

    name: str = Field(min_length=1, description="the Secret's name, in the namespace the pipeline runs in")
    key: str = Field(min_length=1, description="the key inside the Secret whose value is used")
