"""Reading a spec: YAML or JSON into an ExperimentSpec, every error as one ``key.path: message`` line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bakeoff.errors import SpecError
from bakeoff.spec.experiment import ExperimentSpec


def _key_path(loc: tuple[Any, ...], prefix: str = "") -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in str(part) or "(" in str(part):
            continue  # a union branch pydantic names (``list[str]``, ``literal['all-linear']``)
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


def format_validation_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    """One ``key.path: message`` line per pydantic error."""
    lines = []
    for err in exc.errors():
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, SpecError):
            lines += ctx_err.messages
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the spec)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{_key_path(tuple(err['loc']), prefix)}: {msg}")
    return lines


def parse_spec(data: Any, source: str | None = None) -> ExperimentSpec:
    """Validate a mapping as an ExperimentSpec; a SpecError lists every problem with its key path."""
    if not isinstance(data, dict):
        raise SpecError(f"(root): expected a mapping of keys, got {type(data).__name__}", source)
    try:
        return ExperimentSpec.model_validate(data)
    except SpecError as exc:
        raise SpecError(exc.messages, source) from None
    except ValidationError as exc:
        raise SpecError(format_validation_errors(exc), source) from None


def load_spec(path: str | Path) -> ExperimentSpec:
    """Load and validate a spec YAML file. Relative local data paths are resolved against its folder.

    ``env:NAME`` reads the spec (JSON or YAML) from the environment variable NAME instead: the training
    pods of a multi-node job get it that way.
    """
    if str(path).startswith("env:"):
        var = str(path)[4:]
        if var not in os.environ:
            raise SpecError(f"cannot read spec: environment variable {var} is not set", str(path))
        return parse_spec(_parse_yaml(os.environ[var], str(path)), str(path))
    path = Path(path)
    if path.is_dir():
        raise SpecError("cannot read spec: a folder, not a spec file (experiments/NAME.yaml)", str(path))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror or exc}", str(path)) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError(f"(root): not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}, column {column}); "
                        "save the spec as UTF-8", str(path)) from None
    data = _parse_yaml(text, str(path))
    if isinstance(data, dict):
        data = _resolve_relative_sources(data, path.parent)
    return parse_spec(data, str(path))


def _parse_yaml(text: str, source: str) -> Any:
    """The YAML (or JSON) document in ``text``; a SpecError with one line that says where it is broken."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(str(exc.problem or exc.context or "").split())
        raise SpecError(f"(root): not valid YAML: {what}{where}", source) from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"(root): not valid YAML: {' '.join(str(exc).split())}", source) from exc
    except RecursionError:
        raise SpecError("(root): nested too deeply to read (a spec is a few levels of mappings and lists)",
                        source) from None


def _resolve_relative_sources(data: dict, base: Path) -> dict:
    evaluation = data.get("evaluation")
    sql = evaluation.get("sql") if isinstance(evaluation, dict) else None
    if isinstance(sql, dict) and isinstance(sql.get("databases"), str) and "://" not in sql["databases"]:
        if not Path(sql["databases"]).is_absolute():
            sql = {**sql, "databases": str((base / sql["databases"]).resolve())}
            data = {**data, "evaluation": {**evaluation, "sql": sql}}
    sources = (data.get("data") or {}).get("sources") if isinstance(data.get("data"), dict) else None
    if not isinstance(sources, list):
        return data
    fixed = []
    for src in sources:
        if isinstance(src, dict) and isinstance(src.get("uri"), str) and "://" not in src["uri"]:
            p = Path(src["uri"])
            if not p.is_absolute():
                src = {**src, "uri": str((base / p).resolve())}
        fixed.append(src)
    return {**data, "data": {**data["data"], "sources": fixed}}


def spec_from_json(text: str) -> ExperimentSpec:
    """The inverse of ``ExperimentSpec.to_json`` (what components receive)."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SpecError(f"(root): not valid spec JSON ({exc})", "spec_json") from None
    return parse_spec(data, "spec_json")


__all__ = ["format_validation_errors", "load_spec", "parse_spec", "spec_from_json"]
