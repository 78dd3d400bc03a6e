"""The ``data`` section: sources, their record formats, the template, filtering and the split."""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, field_serializer, field_validator, model_validator

from bakeoff.spec.base import Strict
from bakeoff.templates import PLACEHOLDERS, TemplateError, user_template


class DataSource(Strict):
    """One input: a local file or a URI, in a known record format, with optional column names.

    Local files (every one under a local folder) and ``s3://`` objects are read by suffix: ``.jsonl`` (one
    object per line), ``.json`` (an array of objects), ``.csv`` (a header row) and ``.parquet``, as UTF-8;
    ``hf://`` goes through ``datasets``.
    ``fields`` maps the format's canonical names (``FORMAT_FIELDS``) to the file's column names, e.g.
    ``{format: prompt-response, fields: {prompt: question, response: answer}}``.
    """

    FORMAT_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "alpaca": ("instruction", "input", "output"),
        "prompt-response": ("prompt", "response"),
        "sql-create-context": ("question", "context", "answer"),
        "viggo": ("target", "meaning_representation"),
        "chat": ("messages",),
    }

    uri: str = Field(min_length=1, description="a local file or folder (relative to the spec), s3://bucket/prefix "
                     "(every data file under it) or hf://org/name[@revision][:split]")
    format: Literal["alpaca", "prompt-response", "sql-create-context", "viggo", "chat"] = Field(
        default="alpaca", description="the record format, which names the fields read from each row")
    fields: dict[str, str] | None = Field(default=None, description="canonical field name -> column name in the file")
    keep: list[str] = Field(default_factory=list, description="columns copied into each example's meta (e.g. db_id)")
    unwrap: Literal["none", "alpaca"] = Field(
        default="none", description="alpaca: the source's prompts already carry an Alpaca-style wrapper (Below is "
        "an instruction ... ### Instruction ... ### Response, as mosaicml/instruct-v3's do): keep only the "
        "instruction (and input) inside it, so the template wraps it once; counted in stats.json's unwrapped")

    @model_validator(mode="after")
    def _known_fields(self) -> DataSource:
        known = self.FORMAT_FIELDS[self.format]
        unknown = sorted(set(self.fields or {}) - set(known))
        if unknown:
            raise ValueError(f"fields: {', '.join(map(repr, unknown))} not a field of the {self.format} format "
                             f"(its fields: {', '.join(known)})")
        return self


class SplitSpec(Strict):
    """Split sizes: all absolute counts (ints) or all fractions of the usable rows (floats in (0, 1]).

    Fractions are rounded down and must sum to at most 1. Rows left over after the three are not used.
    """

    # typed float so a bad value gets one error; the wrap validator below keeps an int an int
    train: float = Field(description="training rows (a count, or a fraction of the usable rows)")
    validation: float = Field(description="validation rows: the validation loss and the kept checkpoint")
    test: float = Field(description="held-out test rows every arm and variant is scored on")

    @field_validator("train", "validation", "test", mode="wrap")
    @classmethod
    def _positive(cls, v: Any, handler: Any) -> int | float:
        # an int stays a count; anything else is validated as a number (one error, no union branches)
        v = v if isinstance(v, int) and not isinstance(v, bool) else float(handler(v))
        if v <= 0:
            raise ValueError("Input should be greater than 0")
        return v

    @field_serializer("train", "validation", "test")
    def _keep_kind(self, v: int | float) -> int | float:
        return v  # a count dumps as an int, not as the float the annotation says

    @model_validator(mode="after")
    def _same_kind(self) -> SplitSpec:
        values = (self.train, self.validation, self.test)
        kinds = {isinstance(v, float) for v in values}
        if len(kinds) > 1:
            raise ValueError("train, validation and test must all be counts (integers) or all fractions "
                             f"(floats in (0, 1]); got {self.train!r}/{self.validation!r}/{self.test!r}")
        if self.is_fraction:
            if any(v > 1 for v in values):
                raise ValueError("a fraction must be in (0, 1]")
            if sum(values) > 1 + 1e-9:
                raise ValueError(f"fractions sum to {sum(values):g}, more than 1")
        return self

    @property
    def is_fraction(self) -> bool:
        """Whether the sizes are fractions of the usable rows rather than counts."""
        return isinstance(self.train, float)

    def sizes(self, usable: int) -> dict[str, int]:
        """Rows per split for ``usable`` rows: the counts, or each fraction of ``usable`` rounded down."""
        values = {"train": self.train, "validation": self.validation, "test": self.test}
        if not self.is_fraction:
            return dict(values)
        return {k: math.floor(v * usable + 1e-9) for k, v in values.items()}


class UserTemplate(Strict):
    """A prompt template of the spec's own: placeholders {instruction}, {input}, {body}; {response}."""

    prompt: str = Field(min_length=1, description="the prompt, ending where the answer starts; {instruction}, "
                        "{input} and {body} (the instruction, then the input after a blank line) are filled in")
    completion: str = Field(default="{response}", description="what the model learns to write; needs {response}")
    bos: str = Field(default="", description="text written before the prompt, only for a tokenizer that adds no BOS "
                     "of its own (the Llama 2, Mistral, Mixtral and CodeLlama tokenizers add theirs)")
    eos: str = Field(default="</s>", description="text written after the completion (the tokenizer's end of "
                     "sequence)")

    @field_validator("prompt")
    @classmethod
    def _prompt_placeholders(cls, v: str) -> str:
        if not any(p in v for p in PLACEHOLDERS):
            raise ValueError(f"needs at least one of {', '.join(PLACEHOLDERS)}")
        return v

    @field_validator("completion")
    @classmethod
    def _completion_placeholder(cls, v: str) -> str:
        if "{response}" not in v:
            raise ValueError("needs {response}")
        return v

    @model_validator(mode="after")
    def _formats(self) -> UserTemplate:
        try:
            user_template(self.prompt, self.completion, self.bos, self.eos)
        except TemplateError as exc:  # the placeholders are there (checked above) but do not format
            raise ValueError(exc.message) from None
        return self


# A template is a built-in name or a mapping of the spec's own; the tags keep pydantic from reporting
# the branch that does not apply (and, bracketed, stay out of error key paths).
TemplateChoice = Annotated[
    Annotated[Literal["llama2-inst", "alpaca", "text-to-sql", "viggo", "chat"], Tag("[name]")]
    | Annotated[UserTemplate, Tag("[own]")],
    Discriminator(lambda v: "[name]" if isinstance(v, str) else "[own]"),
]


class DataSpec(Strict):
    """Where the examples come from, how they are checked and filtered, and how they are split."""

    sources: list[DataSource] = Field(min_length=1, description="the inputs, read in order and pooled")
    template: TemplateChoice = Field(
        default="llama2-inst", description="llama2-inst, alpaca, text-to-sql, viggo, chat (the tokenizer's chat "
        "template) or a mapping of your own (prompt, completion, bos, eos)")
    split: SplitSpec = Field(description="train / validation / test sizes, drawn with the experiment's seed")
    on_error: Literal["fail", "skip"] = Field(
        default="fail", description="skip: malformed rows are counted (dropped.malformed) and logged, not fatal"
    )
    dedupe: bool = Field(default=True, description="drop exact and normalised duplicate records")
    max_instruction_tokens: int | None = Field(
        default=None, gt=0, description="keep only records whose instruction (with its input) is shorter than "
        "this many tokens, counted with every local arm's tokenizer without special tokens (words without "
        "one): the seed paper's rule"
    )
    remove_leakage: bool = Field(default=True, description="remove test examples whose prompt occurs in train")


__all__ = ["DataSource", "DataSpec", "SplitSpec", "TemplateChoice", "UserTemplate"]
