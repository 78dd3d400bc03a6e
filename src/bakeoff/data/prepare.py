"""The prepare stage: read the sources, check every record, filter, apply the template, split by seed.

Sources are read by suffix (``.jsonl``, ``.json`` array, ``.csv``, ``.parquet``; every such file under a
local folder or an ``s3://`` prefix the same) or from the Hub (``hf://``), and each record is mapped from
its format (``alpaca``, ``prompt-response``, ``sql-create-context``, ``viggo``, ``chat``) to (instruction,
input, output). A malformed row is a DataError naming ``file:row`` and the field, or, with
``on_error: skip``, is counted as ``dropped.malformed`` and logged: a line that is not JSON (or is nested
too deeply), a CSV row with more fields than its header, a field that is not text or not valid UTF-8, a
``keep`` column JSON cannot hold (bytes, a date). A UTF-8 byte order mark is dropped. The outputs are
written all or none. Then, in order: empty instructions or responses, exact
duplicates (same instruction, input and output), normalised duplicates (the same after lowercasing,
collapsing whitespace and stripping punctuation at the ends) and records whose instruction (with its
input) is not shorter than ``max_instruction_tokens`` (the seed paper's rule: "instructions shorter than
2048 tokens", counted without special tokens) are dropped; the first occurrence of a duplicate is kept. After the
seeded shuffle and split, test examples whose normalised prompt also occurs in train are counted
(``leakage.test_in_train``) and, with ``remove_leakage``, replaced by unused rows that do not leak
(or just removed when none are left).

Output folder: ``train.jsonl``, ``validation.jsonl``, ``test.jsonl`` (one example per line:
``id``, ``prompt``, ``completion``, ``instruction``, ``input``, ``reference``, ``source`` [, ``task``])
and ``stats.json``: rows read per source, dropped per reason (``empty_instruction`` and
``empty_response`` always, other reasons once counted), rows per split, ``unused``, ``leakage``,
``token_count`` (what a token is: ``words`` or the first tokenizer's name) and ``token_lengths``
per split: ``{"train": {"prompt": {"p50", "p90", "p99", "max"}, "response": {...}}, ...}``, the
templated prompt and the reference answer, nearest-rank percentiles.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import random
import re
import string
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bakeoff.artifacts import SPLITS, split_path, write_prepared
from bakeoff.errors import DataError, StorageError
from bakeoff.spec import DataSource, DataSpec
from bakeoff.storage import download_s3_prefix, parse_hf_uri
from bakeoff.templates import get_template

log = logging.getLogger(__name__)

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
VIGGO_INSTRUCTION = (
    "Write the meaning representation (dialogue act and attribute slots) of this sentence about a video game:"
)


@dataclass
class PrepareResult:
    """What the prepare stage read, dropped and wrote."""

    out_dir: str
    rows_read: dict[str, int]
    dropped: dict[str, int]
    rows: dict[str, int]
    unused: int = 0
    files: dict[str, str] = field(default_factory=dict)
    leakage: dict[str, int] = field(default_factory=dict)
    token_count: str = "words"
    unwrapped: int = 0  # prompts whose Alpaca-style wrapper was removed (a source's unwrap: alpaca)
    token_lengths: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- reading ---------------------------------------------------------------------------------------


def _fail_or_collect(message: str, malformed: list[str] | None, exc: Exception | None = None) -> None:
    if malformed is None:
        raise DataError(message) from exc
    malformed.append(message)


def _decode(raw: bytes) -> str:
    """UTF-8 text; bytes that are not UTF-8 become lone surrogates (``surrogateescape``), so the row is still
    read and the field that holds them is named by ``_check_text``."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")


# a lone UTF-16 surrogate: a byte that was not UTF-8 (U+DC80..U+DCFF, from _decode) or a broken \ud83d escape
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(label: str, where: str, value: str) -> str:
    """``value`` if it is valid Unicode text; a DataError naming the row, the field and the bad byte otherwise."""
    bad = _SURROGATE.search(value)
    if bad is None:
        return value
    code = ord(bad.group())
    if 0xDC80 <= code <= 0xDCFF:
        raise DataError(f"{label}: {where} is not valid UTF-8 (byte {code - 0xDC00:#04x} at character "
                        f"{bad.start() + 1}); save the file as UTF-8")
    raise DataError(f"{label}: {where} holds half of a UTF-16 surrogate pair (\\u{code:04x} at character "
                    f"{bad.start() + 1}), which is not text")


def _loads(text: str) -> Any:
    """``json.loads`` with nesting too deep for the parser reported as a JSON error (not a RecursionError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None


def _iter_jsonl(path: Path, label: str, malformed: list[str] | None = None) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = _decode(raw)
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a UTF-8 byte order mark
            if not line.strip():
                continue
            try:
                record = _loads(line)
            except json.JSONDecodeError as exc:
                _fail_or_collect(f"{label}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})", malformed, exc)
                continue
            yield lineno, record


def _iter_json(path: Path, label: str, malformed: list[str] | None = None) -> Iterator[tuple[int, Any]]:
    """A ``.json`` file: an array of objects (read whole), else JSON Lines; a file that is one JSON object
    spread over several lines is refused with what it holds (its records are often under one key)."""
    with path.open("rb") as fh:
        head = _decode(fh.read(4096)).removeprefix("\ufeff").lstrip()
    if head.startswith("{"):
        _refuse_json_object(path, label)
    if not head.startswith("["):
        yield from _iter_jsonl(path, label, malformed)
        return
    try:
        records = _loads(_decode(path.read_bytes()).removeprefix("\ufeff"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{label}: not a valid JSON array ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(records, list):  # "[1] [2]" and the like fail above; this is defensive
        raise DataError(f"{label}: expected a JSON array of objects, got {type(records).__name__}")
    yield from enumerate(records, start=1)


def _refuse_json_object(path: Path, label: str) -> None:
    """A DataError when ``path`` is one JSON object rather than records: spread over several lines, or holding
    a list of objects (its records, most likely). A one-line object without one is one JSON Lines record."""
    text = _decode(path.read_bytes()).removeprefix("\ufeff").strip()
    try:
        doc = _loads(text)
    except json.JSONDecodeError:
        return  # several objects (JSON Lines) or broken: the JSON Lines reader reads or names the line
    if not isinstance(doc, dict):
        return
    lists = [k for k, v in doc.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
    if not lists and "\n" not in text:
        return
    hint = f"; its records seem to be under {', '.join(map(repr, lists))}" if lists else ""
    raise DataError(f"{label}: holds one JSON object (keys: {', '.join(map(str, doc)) or 'none'}), not records: a "
                    f".json file is an array of objects ([{{...}}, {{...}}]) or one object per line{hint}")


def _iter_csv(path: Path, label: str, malformed: list[str] | None = None) -> Iterator[tuple[int, Any]]:
    """CSV rows after the header row, numbered from 1; a byte order mark before the header is dropped."""
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.DictReader(fh)
        row = 0
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # a NUL byte, a field past csv's size limit
                row += 1
                _fail_or_collect(f"{label}:{row}: not valid CSV ({exc})", malformed, exc)
                continue
            row += 1
            if None in record:  # DictReader files the values past the header under None
                _fail_or_collect(f"{label}:{row}: {len(reader.fieldnames) + len(record[None])} fields, but the "
                                 f"header has {len(reader.fieldnames)} columns (a value with a comma that is not "
                                 "quoted?)", malformed)
                continue
            yield row, record


def _iter_file(path: Path, label: str, malformed: list[str] | None = None) -> Iterator[tuple[int, Any]]:
    """(row, record) pairs of one file by suffix, streamed; rows are 1-based lines (JSONL) or record numbers.

    A ``.json`` file is a JSON array of objects (read whole); one that does not start with ``[`` is read
    as JSONL, unless it is one object (``_refuse_json_object``). CSV rows are numbered from 1 after the
    header; every CSV value is a string. Parquet is read in record batches.
    """
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _iter_jsonl(path, label, malformed)
    elif suffix == ".json":
        yield from _iter_json(path, label, malformed)
    elif suffix == ".csv":
        yield from _iter_csv(path, label, malformed)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
            row = 0
            for batch in batches:
                for record in batch.to_pylist():
                    row += 1
                    yield row, record
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{label}: not a readable Parquet file ({exc})") from exc
    else:
        raise DataError(f"{label}: unsupported file type {suffix or '(none)'}; files read: {', '.join(SUFFIXES)}")


def _iter_files(paths: Iterable[Path], labels: Callable[[Path], str], uri: str,
                malformed: list[str] | None) -> Iterator[tuple[str, Any]]:
    """The rows of every data file in ``paths`` (a folder's or an s3:// prefix's), labelled by ``labels``."""
    found = False
    for path in paths:
        label = labels(path)
        for n, record in _iter_file(path, label, malformed):
            found = True
            yield f"{label}:{n}", record
    if not found:
        raise DataError(f"data source {uri}: no {', '.join(SUFFIXES)} files with rows found")


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def iter_source(source: DataSource, malformed: list[str] | None = None) -> Iterator[tuple[str, Any]]:
    """Rows of one source as (``file:row`` label, record), streamed: a local file, every data file under a
    local folder or ``s3://`` prefix (hidden ones aside), or ``hf://``.

    With a ``malformed`` list, rows that cannot be parsed are appended to it as messages instead of raising.
    """
    uri = source.uri
    if uri.startswith("hf://"):
        yield from _read_hub(uri)
        return
    if uri.startswith("s3://"):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                download_s3_prefix(uri, tmp)
            except StorageError as exc:
                raise DataError(f"data source {uri}: {exc}") from exc
            yield from _iter_files(_data_files(Path(tmp)),
                                   lambda p: f"{uri.rstrip('/')}/{p.relative_to(tmp).as_posix()}", uri, malformed)
        return
    path = Path(uri)
    try:
        if path.is_dir():
            yield from _iter_files(_data_files(path), str, uri, malformed)
            return
        if not path.is_file():
            raise DataError(f"data source {uri}: file not found")
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(f"data source {uri}: unsupported file type; files read: {', '.join(SUFFIXES)}")
        for n, record in _iter_file(path, uri, malformed):
            yield f"{uri}:{n}", record
    except OSError as exc:  # unreadable (permissions, a broken mount)
        raise DataError(f"data source {exc.filename or uri}: cannot be read ({exc.strerror or exc})") from exc


def read_source(source: DataSource, malformed: list[str] | None = None) -> list[tuple[str, Any]]:
    """``iter_source`` as a list."""
    return list(iter_source(source, malformed))


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


# --- record formats --------------------------------------------------------------------------------


def _field(label: str, record: dict, name: str, fields: dict[str, str], required: bool, fmt: str) -> str:
    """The string in canonical field ``name`` (under its mapped column); '' when optional and absent."""
    column = fields.get(name, name)
    where = f"field '{column}'" + (f" (the {fmt} '{name}')" if column != name else "")
    value = record.get(column)
    if value is None:
        if required:
            present = ", ".join(sorted(str(k) for k in record if record[k] is not None)) or "none"
            raise DataError(f"{label}: {where} is missing (columns present: {present})")
        return ""
    if not isinstance(value, str):
        raise DataError(f"{label}: {where} must be a string, got {type(value).__name__}")
    return _check_text(label, where, value)


def _chat(label: str, record: dict, column: str) -> tuple[str, str, str]:
    """The last assistant message is the output, the last user message before it the instruction.

    System messages and earlier turns are ignored. A CSV cell holding the messages as JSON is parsed.
    """
    messages = record.get(column)
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError as exc:
            raise DataError(f"{label}: field '{column}' is a string but not a JSON list of messages") from exc
    if messages is None:
        raise DataError(f"{label}: field '{column}' is missing")
    if not isinstance(messages, list):
        raise DataError(f"{label}: field '{column}' must be a list of messages, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f"{label}: field '{column}'[{i}] must be an object with string 'role' and 'content'")
        _check_text(label, f"field '{column}'[{i}].content", m["content"])
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "assistant"), None)
    if last is None:
        raise DataError(f"{label}: field '{column}' has no assistant message")
    user = next((m for m in reversed(messages[:last]) if m["role"] == "user"), None)
    if user is None:
        raise DataError(f"{label}: field '{column}' has no user message before the last assistant message")
    return user["content"], "", messages[last]["content"]


def extract_record(label: str, record: Any, fmt: str = "alpaca", fields: dict[str, str] | None = None
                   ) -> tuple[str, str, str]:
    """(instruction, input, output) of one record in format ``fmt``; a DataError names the row and field.

    ``fields`` maps the format's canonical names to the record's keys. prompt-response: prompt ->
    instruction, response -> output; sql-create-context: question -> instruction, context -> input,
    answer -> output; viggo: a fixed request -> instruction, the ``target`` sentence -> input,
    ``meaning_representation`` -> output; chat: see ``_chat``.
    """
    if not isinstance(record, dict):
        raise DataError(f"{label}: expected a JSON object, got {type(record).__name__}")
    fields = fields or {}
    if fmt == "alpaca":
        return (_field(label, record, "instruction", fields, True, fmt),
                _field(label, record, "input", fields, False, fmt),
                _field(label, record, "output", fields, True, fmt))
    if fmt == "prompt-response":
        return (_field(label, record, "prompt", fields, True, fmt), "",
                _field(label, record, "response", fields, True, fmt))
    if fmt == "sql-create-context":
        return (_field(label, record, "question", fields, True, fmt),
                _field(label, record, "context", fields, False, fmt),
                _field(label, record, "answer", fields, True, fmt))
    if fmt == "viggo":
        sentence = _field(label, record, "target", fields, True, fmt)
        mr = _field(label, record, "meaning_representation", fields, True, fmt)
        return (VIGGO_INSTRUCTION if sentence.strip() else "", sentence.strip(), mr)
    if fmt == "chat":
        return _chat(label, record, fields.get("messages", "messages"))
    raise DataError(f"{label}: unknown record format {fmt!r}")


def _json_value(value: Any) -> bool:
    """Whether JSON holds ``value`` as it is: text (valid Unicode), a finite number, a boolean, null, or lists
    and string-keyed mappings of them."""
    if value is None or isinstance(value, (bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return _SURROGATE.search(value) is None
    if isinstance(value, (list, tuple)):
        return all(_json_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_value(v) for k, v in value.items())
    return False


def kept_columns(label: str, record: dict, keep: Sequence[str]) -> dict[str, Any]:
    """The ``keep`` columns of a record (those it has), for its example's meta; a DataError names the row and
    column of a value JSON cannot hold (bytes, a date, NaN, text that is not UTF-8)."""
    meta = {}
    for column in keep:
        if column not in record:
            continue
        value = record[column]
        if not _json_value(value):
            if isinstance(value, str):
                _check_text(label, f"field '{column}' (in keep)", value)
            raise DataError(f"{label}: field '{column}' (in keep) is {type(value).__name__} {_short(value)}, which a "
                            "JSON example cannot hold; keep only text, number, boolean or null columns (convert "
                            "it to text in the file, e.g. a date as 2024-01-31)")
        meta[column] = value
    return meta


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_alpaca(label: str, record: Any) -> tuple[str, str, str]:
    """(instruction, input, output) of an alpaca record; a DataError names the row and field."""
    return extract_record(label, record, "alpaca")


# --- filtering and statistics ----------------------------------------------------------------------


def normalise(text: str) -> str:
    """Lowercase, whitespace runs collapsed to one space, punctuation and spaces stripped at both ends."""
    return re.sub(r"\s+", " ", text.lower()).strip(string.punctuation + " ")


def token_counter(tokenizer: Any | None) -> Callable[[str], int]:
    """Tokens in a text with ``tokenizer`` (``tok(text)["input_ids"]`` or ``tok.encode(text)``), else words."""
    if tokenizer is None:
        return lambda text: len(text.split())
    if hasattr(tokenizer, "bos_token_id"):  # a transformers tokenizer: the text's own tokens, no BOS / EOS
        return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if callable(tokenizer):
        return lambda text: len(tokenizer(text)["input_ids"])
    if hasattr(tokenizer, "encode"):
        return lambda text: len(tokenizer.encode(text))
    raise TypeError(f"{type(tokenizer).__name__}: a tokenizer must be callable or have .encode")


# An Alpaca-style wrapper a source's prompts already carry (mosaicml/instruct-v3's): an optional preamble,
# "### Instruction" (colon optional), the instruction, an optional "### Input" block, then "### Response".
_ALPACA_WRAPPER = re.compile(
    r"^\s*(?:Below is an instruction[^\n]*?(?:request|task)\.?\s*)?###\s*Instruction:?\s*(?P<instruction>.*?)"
    r"(?:\s*###\s*Input:?\s*(?P<input>.*?))?\s*###\s*Response:?\s*$", re.DOTALL)


def unwrap_alpaca(instruction: str, input_text: str = "") -> tuple[str, str, int]:
    """The instruction (and input) inside an Alpaca-style wrapper, so the template wraps it once; a text
    without the wrapper as it is. The third value is 1 when a wrapper was removed."""
    match = _ALPACA_WRAPPER.match(instruction)
    if not match or not match.group("instruction").strip():
        return instruction, input_text, 0
    inner = (match.group("input") or "").strip()
    return match.group("instruction").strip(), "\n\n".join(x for x in (inner, input_text.strip()) if x), 1


def _instruction(ex: dict) -> str:
    """The instruction a record asks, its input after a blank line (what the seed's length rule counts)."""
    return f"{ex['instruction']}\n\n{ex['input']}" if ex.get("input") else ex["instruction"]


def percentiles(values: Sequence[int]) -> dict[str, int]:
    """Nearest-rank p50, p90, p99 and the max of ``values``; zeros when empty."""
    ordered = sorted(values)
    if not ordered:
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    rank = {p: ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1] for p in (50, 90, 99)}
    return {"p50": rank[50], "p90": rank[90], "p99": rank[99], "max": ordered[-1]}


def _tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", None) or getattr(tokenizer, "name", None) or type(tokenizer).__name__)


# --- the stage -------------------------------------------------------------------------------------


def _read_examples(data: DataSpec, template, dropped: dict[str, int]) -> tuple[dict[str, int], list[dict]]:
    """Every usable example of every source in source order; malformed and empty rows counted in ``dropped``."""
    skip = data.on_error == "skip"
    rows_read: dict[str, int] = {}
    examples = []
    for source in data.sources:
        malformed: list[str] | None = [] if skip else None
        count = bad_fields = 0
        for label, record in iter_source(source, malformed):
            count += 1
            try:
                instruction, input_text, output = extract_record(label, record, source.format, source.fields)
                meta = kept_columns(label, record, source.keep)
                task = record.get("task")
                task = _check_text(label, "field 'task'", task) if isinstance(task, str) else None
                if source.unwrap == "alpaca":
                    instruction, input_text, unwrapped = unwrap_alpaca(instruction, input_text)
                    dropped["unwrapped"] = dropped.get("unwrapped", 0) + unwrapped
            except DataError as exc:
                if not skip:
                    raise
                malformed.append(str(exc))
                bad_fields += 1
                continue
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
                **({"task": task} if task is not None else {}),
                **({"messages": template.messages(instruction, input_text)} if template.chat else {}),
                **({"meta": meta} if source.keep else {}),
            })
        for message in malformed or []:
            log.warning("skipped malformed row %s", message)
            dropped["malformed"] = dropped.get("malformed", 0) + 1
        # unparseable lines never reach the loop above (the reader collected them); bad fields did
        rows_read[source.uri] = count + len(malformed or []) - bad_fields
    return rows_read, examples


def _digest(*parts: str) -> bytes:
    """A 16-byte fingerprint: the sets below hold these, not a second copy of the text."""
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).digest()


def _dedupe(examples: list[dict], dropped: dict[str, int]) -> list[dict]:
    exact: set[bytes] = set()
    loose: set[bytes] = set()
    kept = []
    for ex in examples:
        fields = (ex["instruction"], ex["input"], ex["reference"])
        key, norm = _digest(*fields), _digest(*(normalise(x) for x in fields))
        if key in exact:
            dropped["duplicate_exact"] = dropped.get("duplicate_exact", 0) + 1
        elif norm in loose:
            dropped["duplicate_normalised"] = dropped.get("duplicate_normalised", 0) + 1
        else:
            kept.append(ex)
        exact.add(key)
        loose.add(norm)
    return kept


def prepare_data(data: DataSpec, seed: int, out_dir: str | Path, *, tokenizers: Sequence[Any] = ()) -> PrepareResult:
    """Read, check, filter, template and split ``data`` into ``out_dir``; same inputs and seed, same bytes.

    ``tokenizers`` are loaded tokenizer objects: a prompt is too long when any of them counts more than
    ``data.max_instruction_tokens``; the first one measures ``token_lengths``. Without any, words are counted.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise StorageError(f"{out}: exists and is not a folder; the prepare stage writes its splits into a folder")
    template = get_template(data.template)
    dropped = {"empty_instruction": 0, "empty_response": 0}
    rows_read, examples = _read_examples(data, template, dropped)
    unwrapped = dropped.pop("unwrapped", 0)  # counted alongside, not a reason to drop
    if data.dedupe:
        examples = _dedupe(examples, dropped)
    counters = [token_counter(t) for t in tokenizers] or [token_counter(None)]
    token_count = _tokenizer_name(tokenizers[0]) if tokenizers else "words"
    if data.max_instruction_tokens is not None:
        if not tokenizers:
            log.warning("data.max_instruction_tokens: no tokenizer given, so instruction length is counted in words")
        before = len(examples)
        examples = [ex for ex in examples
                    if max(count(_instruction(ex)) for count in counters) < data.max_instruction_tokens]
        dropped["too_long"] = before - len(examples)

    sizes = data.split.sizes(len(examples))
    need = sum(sizes.values())
    if len(examples) < need or min(sizes.values()) < 1:
        sp = data.split
        raise DataError(
            f"data.split: asks for {need} rows ({sp.train}/{sp.validation}/{sp.test}"
            f"{' = ' + '/'.join(str(v) for v in sizes.values()) if sp.is_fraction else ''}) "
            f"but only {len(examples)} usable rows were read"
            + (" (a fraction gives an empty split)" if min(sizes.values()) < 1 else "")
            + (f"; {dropped['malformed']} malformed rows were skipped (on_error: skip; each is logged above)"
               if dropped.get("malformed") else "")
        )
    random.Random(seed).shuffle(examples)
    parts, start = {}, 0
    for name in SPLITS:
        parts[name] = examples[start:start + sizes[name]]
        start += sizes[name]
    spare = examples[start:]

    train_prompts = {_digest(normalise(ex["prompt"])) for ex in parts["train"]}
    leaked = [ex for ex in parts["test"] if _digest(normalise(ex["prompt"])) in train_prompts]
    leakage = {"test_in_train": len(leaked), "removed": 0}
    if leaked and data.remove_leakage:
        clean = [ex for ex in parts["test"] if _digest(normalise(ex["prompt"])) not in train_prompts]
        refill = [ex for ex in spare if _digest(normalise(ex["prompt"])) not in train_prompts][:len(leaked)]
        used = {id(ex) for ex in refill}
        spare = [ex for ex in spare if id(ex) not in used]
        parts["test"] = clean + refill
        leakage["removed"] = len(leaked)
        log.warning("removed %d test examples whose prompt occurs in train (%d replaced by unused rows)",
                    len(leaked), len(refill))
    if not parts["test"]:
        raise DataError(f"data.split: the test split is empty: all {len(leaked)} test rows also occur in train and "
                        "were removed (data.remove_leakage) with no unused rows left to replace them; add rows, "
                        "lower data.split.train, or dedupe the sources")

    count = counters[0]
    token_lengths = {
        name: {"prompt": percentiles([count(ex["prompt"]) for ex in part]),
               "response": percentiles([count(ex["reference"]) for ex in part])}
        for name, part in parts.items()
    }
    rows = {name: len(part) for name, part in parts.items()}
    files = {name: split_path(out, name).name for name in SPLITS}
    result = PrepareResult(str(out), rows_read, dropped, rows, unused=len(spare), files=files, leakage=leakage,
                           token_count=token_count, token_lengths=token_lengths, unwrapped=unwrapped)
    out.mkdir(parents=True, exist_ok=True)
    # all or none; stats.json has the same bytes anywhere (no out_dir in it)
    write_prepared(out, parts, {k: v for k, v in result.to_dict().items() if k != "out_dir"})
    log.info("prepared %s (dropped %s)", rows, dropped)
    return result


def prepare_for_arms(data: DataSpec, arm_models: Sequence[str], seed: int, out_dir: str | Path) -> PrepareResult:
    """``prepare_data`` counting tokens with every arm's tokenizer when ``max_instruction_tokens`` is set."""
    tokenizers: list[Any] = []
    if data.max_instruction_tokens is not None:
        from bakeoff.models.loading import load_tokenizer

        tokenizers = [load_tokenizer(uri) for uri in dict.fromkeys(arm_models)]
    return prepare_data(data, seed, out_dir, tokenizers=tokenizers)
