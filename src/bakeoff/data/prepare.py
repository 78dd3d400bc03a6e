"""The prepare stage: read the sources, check every record, apply the template, split by seed.

Output folder: ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` (one example per line:
``id``, ``prompt``, ``completion``, ``instruction``, ``input``, ``reference``, ``source``) and
``stats.json`` (rows read per source, dropped per reason, rows per split).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bakeoff.data.templates import get_template
from bakeoff.errors import DataError, StorageError
from bakeoff.spec import DataSource, DataSpec
from bakeoff.storage import download_s3_prefix, parse_hf_uri

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


@dataclass
class PrepareResult:
    """What the prepare stage read, dropped and wrote."""

    out_dir: str
    rows_read: dict[str, int]
    dropped: dict[str, int]
    rows: dict[str, int]
    unused: int = 0
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_jsonl(path: Path, label: str) -> list[tuple[int, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{label}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    return rows


def read_source(source: DataSource) -> list[tuple[str, dict]]:
    """Rows of one source as (``file:row`` label, record). Local JSONL, ``s3://`` JSONL, or ``hf://``."""
    uri = source.uri
    if uri.startswith("hf://"):
        return _read_hub(uri)
    if uri.startswith("s3://"):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                download_s3_prefix(uri, tmp)
            except StorageError as exc:
                raise DataError(f"data source {uri}: {exc}") from exc
            out = []
            for path in sorted(Path(tmp).rglob("*.jsonl")):
                rel = path.relative_to(tmp).as_posix()
                out += [(f"{uri.rstrip('/')}/{rel}:{n}", r) for n, r in _read_jsonl(path, f"{uri}/{rel}")]
            if not out:
                raise DataError(f"data source {uri}: no .jsonl objects found")
            return out
    path = Path(uri)
    if not path.is_file():
        raise DataError(f"data source {uri}: file not found")
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"data source {uri}: only JSONL files are read (one JSON object per line)")
    return [(f"{uri}:{n}", r) for n, r in _read_jsonl(path, uri)]


def _read_hub(uri: str) -> list[tuple[str, dict]]:
    try:
        ref = parse_hf_uri(uri)
    except StorageError as exc:
        raise DataError(str(exc)) from exc
    try:
        import datasets

        ds = datasets.load_dataset(ref.repo_id, revision=ref.revision, split=ref.split or "train")
    except Exception as exc:  # network, auth, missing split: all end here
        raise DataError(
            f"data source {uri}: cannot be loaded from the Hugging Face Hub ({exc}); if the Hub is not "
            f"reachable from here, copy the data to s3://... or a local JSONL file and use that"
        ) from exc
    return [(f"{uri}:{i + 1}", dict(r)) for i, r in enumerate(ds)]


def check_alpaca(label: str, record: Any) -> tuple[str, str, str]:
    """(instruction, input, output) of an alpaca record; a DataError names the row and field."""
    if not isinstance(record, dict):
        raise DataError(f"{label}: expected a JSON object, got {type(record).__name__}")
    values = []
    for key, required in (("instruction", True), ("input", False), ("output", True)):
        if key not in record or record[key] is None:
            if required:
                raise DataError(f"{label}: field '{key}' is missing")
            values.append("")
            continue
        if not isinstance(record[key], str):
            raise DataError(f"{label}: field '{key}' must be a string, got {type(record[key]).__name__}")
        values.append(record[key])
    return values[0], values[1], values[2]


def prepare_data(data: DataSpec, seed: int, out_dir: str | Path) -> PrepareResult:
    """Read, check, template and split ``data`` into ``out_dir``; same inputs and seed, same bytes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template = get_template(data.template)
    rows_read: dict[str, int] = {}
    dropped = {"empty_instruction": 0, "empty_response": 0}
    examples = []
    for source in data.sources:
        rows = read_source(source)
        rows_read[source.uri] = len(rows)
        for label, record in rows:
            instruction, input_text, output = check_alpaca(label, record)
            if not instruction.strip():
                dropped["empty_instruction"] += 1
                continue
            if not output.strip():
                dropped["empty_response"] += 1
                continue
            key = json.dumps([instruction, input_text, output], ensure_ascii=False)
            examples.append({
                "id": hashlib.sha256(key.encode()).hexdigest()[:12],
                "prompt": template.prompt(instruction, input_text),
                "completion": template.completion(output),
                "instruction": instruction,
                "input": input_text,
                "reference": output.strip(),
                "source": label,
                **({"task": record["task"]} if isinstance(record.get("task"), str) else {}),
            })
    need = data.split.train + data.split.validation + data.split.test
    if len(examples) < need:
        raise DataError(
            f"data.split: asks for {need} rows ({data.split.train}/{data.split.validation}/{data.split.test}) "
            f"but only {len(examples)} usable rows were read"
        )
    random.Random(seed).shuffle(examples)
    sizes = {"train": data.split.train, "validation": data.split.validation, "test": data.split.test}
    files, start = {}, 0
    for name in SPLITS:
        part = examples[start:start + sizes[name]]
        start += sizes[name]
        path = out / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for ex in part:
                fh.write(json.dumps(ex, ensure_ascii=False, sort_keys=True) + "\n")
        files[name] = path.name
    result = PrepareResult(str(out), rows_read, dropped, sizes, unused=len(examples) - need, files=files)
    stats = {k: v for k, v in result.to_dict().items() if k != "out_dir"}  # the same bytes wherever it is written
    (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    log.info("prepared %s", sizes)
    return result


def read_split(data_dir: str | Path, split: str) -> list[dict]:
    """The examples of one split written by ``prepare_data``."""
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: missing; was the prepare stage run into {data_dir}?")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
