"""Tests for the data stage in full: file types, record formats, on_error, filters, splits, leakage, lengths."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bakeoff.artifacts import SPLITS, read_split
from bakeoff.data.prepare import (
    VIGGO_INSTRUCTION,
    extract_record,
    normalise,
    percentiles,
    prepare_data,
    read_source,
)
from bakeoff.errors import DataError, SpecError
from bakeoff.spec import DataSource, DataSpec, SplitSpec, parse_spec


def _rows(n: int) -> list[dict]:
    return [{"instruction": f"Question number {i}?", "input": "", "output": f"answer {i}"} for i in range(n)]


def _write(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` in the file type named by the suffix."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _spec(*sources: DataSource, split=(6, 2, 2), **kw) -> DataSpec:
    train, validation, test = split
    return DataSpec(sources=list(sources), split=SplitSpec(train=train, validation=validation, test=test), **kw)


# --- file types ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_file_type_reads_the_same_records(tmp_path, suffix):
    rows = _rows(4)
    path = _write(tmp_path / f"d{suffix}", rows)
    got = read_source(DataSource(uri=str(path)))
    assert [r for _, r in got] == rows
    assert [label for label, _ in got] == [f"{path}:{i}" for i in range(1, 5)]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_missing_field_names_file_row_and_field(tmp_path, suffix):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": None}]
    path = _write(tmp_path / f"d{suffix}", rows)
    if suffix == ".csv":  # an empty CSV cell is an empty string, a missing cell is None
        path.write_text("instruction,output\na,b\nc\n")
    with pytest.raises(DataError) as info:
        prepare_data(_spec(DataSource(uri=str(path)), split=(1, 1, 1)), seed=0, out_dir=tmp_path / "out")
    assert str(info.value) == f"{path}:2: field 'output' is missing (columns present: instruction)"


def test_json_without_brackets_is_read_as_jsonl_and_unknown_suffix_is_error(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(2)))
    assert [r for _, r in read_source(DataSource(uri=str(path)))] == _rows(2)
    txt = tmp_path / "d.txt"
    txt.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        read_source(DataSource(uri=str(txt)))


# --- record formats --------------------------------------------------------------------------------

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}]


@pytest.mark.parametrize(("fmt", "record", "fields", "expected"), [
    ("alpaca", {"instruction": "i", "input": "x", "output": "o"}, None, ("i", "x", "o")),
    ("alpaca", {"q": "i", "o": "o"}, {"instruction": "q", "output": "o"}, ("i", "", "o")),
    ("prompt-response", {"prompt": "p", "response": "r"}, None, ("p", "", "r")),
    ("prompt-response", {"question": "p", "answer": "r"}, {"prompt": "question", "response": "answer"},
     ("p", "", "r")),
    ("sql-create-context", {"question": "q", "context": "CREATE TABLE t", "answer": "SELECT 1"}, None,
     ("q", "CREATE TABLE t", "SELECT 1")),
    ("sql-create-context", {"nl": "q", "schema": "CREATE TABLE t", "sql": "SELECT 1"},
     {"question": "nl", "context": "schema", "answer": "sql"}, ("q", "CREATE TABLE t", "SELECT 1")),
    ("viggo", {"target": "I like Halo.", "meaning_representation": "give_opinion(name[Halo])"}, None,
     (VIGGO_INSTRUCTION, "I like Halo.", "give_opinion(name[Halo])")),
    ("viggo", {"text": "I like Halo.", "mr": "give_opinion(name[Halo])"},
     {"target": "text", "meaning_representation": "mr"},
     (VIGGO_INSTRUCTION, "I like Halo.", "give_opinion(name[Halo])")),
    ("chat", {"messages": CHAT}, None, ("2+2?", "", "4")),
    ("chat", {"conversation": json.dumps(CHAT)}, {"messages": "conversation"}, ("2+2?", "", "4")),
    ("chat", {"messages": CHAT[:3] + [{"role": "user", "content": "unanswered"}]}, None, ("Hi", "", "Hello")),
])
def test_record_formats(fmt, record, fields, expected):
    assert extract_record("f:1", record, fmt, fields) == expected


@pytest.mark.parametrize(("fmt", "record", "fields", "message"), [
    ("prompt-response", {"prompt": "p"}, None, "field 'response' is missing (columns present: prompt)"),
    ("prompt-response", {"q": "p"}, {"prompt": "q", "response": "a"},
     "field 'a' (the prompt-response 'response') is missing (columns present: q)"),
    ("sql-create-context", {"question": "q", "answer": 3}, None, "field 'answer' must be a string, got int"),
    ("viggo", {"target": "s"}, None,
     "field 'meaning_representation' is missing (columns present: target)"),
    ("chat", {"messages": [{"role": "user", "content": "x"}]}, None, "field 'messages' has no assistant message"),
    ("chat", {"messages": [{"role": "assistant", "content": "x"}]}, None,
     "field 'messages' has no user message before the last assistant message"),
    ("chat", {"messages": [{"role": "user"}]}, None,
     "field 'messages'[0] must be an object with string 'role' and 'content'"),
    ("chat", {"messages": "nope"}, None, "field 'messages' is a string but not a JSON list of messages"),
    ("chat", {}, None, "field 'messages' is missing"),
])
def test_record_format_errors(fmt, record, fields, message):
    with pytest.raises(DataError) as info:
        extract_record("f:7", record, fmt, fields)
    assert str(info.value) == f"f:7: {message}"


def test_unknown_field_mapping_key_is_spec_error():
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "x", "arms": [{"name": "a", "model": "tiny://llama"}],
                    "data": {"sources": [{"uri": "a.csv", "format": "viggo", "fields": {"output": "mr"}}],
                             "split": {"train": 1, "validation": 1, "test": 1}}})
    assert "data.sources[0]: fields: 'output' not a field of the viggo format" in str(info.value)


def test_sources_of_different_formats_merge(tmp_path):
    a = _write(tmp_path / "a.csv", [{"q": f"q{i}", "a": f"a{i}"} for i in range(5)])
    b = _write(tmp_path / "b.parquet", [{"messages": [{"role": "user", "content": f"u{i}"},
                                                      {"role": "assistant", "content": f"r{i}"}]} for i in range(5)])
    data = _spec(DataSource(uri=str(a), format="prompt-response", fields={"prompt": "q", "response": "a"}),
                 DataSource(uri=str(b), format="chat"))
    result = prepare_data(data, seed=0, out_dir=tmp_path / "out")
    assert result.rows_read == {str(a): 5, str(b): 5}
    refs = sorted(ex["reference"] for s in SPLITS for ex in read_split(tmp_path / "out", s))
    assert refs == sorted([f"a{i}" for i in range(5)] + [f"r{i}" for i in range(5)])


# --- on_error --------------------------------------------------------------------------------------


def _broken_file(tmp_path) -> Path:
    lines = [json.dumps(r) for r in _rows(10)]
    lines[2] = '{"instruction": "x", '  # not JSON
    lines[5] = json.dumps({"instruction": "y"})  # no output
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("on_error", "expected"), [
    ("fail", "broken.jsonl:3: not valid JSON"),
    ("skip", None),
])
def test_on_error_fail_or_skip(tmp_path, caplog, on_error, expected):
    path = _broken_file(tmp_path)
    data = _spec(DataSource(uri=str(path)), split=(4, 2, 2), on_error=on_error)
    if expected:
        with pytest.raises(DataError, match=expected):
            prepare_data(data, seed=0, out_dir=tmp_path / "out")
        return
    with caplog.at_level(logging.WARNING, logger="bakeoff.data.prepare"):
        result = prepare_data(data, seed=0, out_dir=tmp_path / "out")
    assert result.dropped["malformed"] == 2
    assert result.rows_read == {str(path): 10}
    assert f"{path}:3: not valid JSON" in caplog.text
    assert f"{path}:6: field 'output' is missing" in caplog.text
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["dropped"]["malformed"] == 2


# --- filters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "same"), [
    ("Hello,   World!", "hello, world", True),
    ("  What is 2+2? ", "what is 2+2", True),
    ("a b", "ab", False),
    ("don't", "dont", False),
])
def test_normalise(a, b, same):
    assert (normalise(a) == normalise(b)) is same


def test_duplicates_counted_separately(tmp_path):
    rows = _rows(10)
    rows += [dict(rows[0]), dict(rows[1])]  # 2 exact
    rows += [{"instruction": "  QUESTION number 2 ", "input": "", "output": "Answer 2."}]  # 1 normalised
    path = _write(tmp_path / "d.jsonl", rows)
    result = prepare_data(_spec(DataSource(uri=str(path))), seed=0, out_dir=tmp_path / "out")
    assert result.dropped == {"empty_instruction": 0, "empty_response": 0,
                              "duplicate_exact": 2, "duplicate_normalised": 1}
    assert result.unused == 0
    off = prepare_data(_spec(DataSource(uri=str(path)), dedupe=False, remove_leakage=False), seed=0,
                       out_dir=tmp_path / "off")
    assert off.unused == 3 and "duplicate_exact" not in off.dropped


class WordPieces:
    """A stand-in tokenizer: HF style, ``tok(text)["input_ids"]``, one id per character of each word."""

    name_or_path = "chars"

    def __call__(self, text):
        return {"input_ids": [0] * len(text.replace(" ", ""))}


class Encoder:
    """A stand-in tiktoken-style tokenizer: ``.encode`` only, two ids per word."""

    def encode(self, text):
        return [0, 0] * len(text.split())


def test_too_long_with_word_fallback(tmp_path, caplog):
    # a normal instruction is a few words, the long one 60
    path = _write(tmp_path / "d.jsonl", _rows(10) + [{"instruction": "word " * 60, "output": "long"}])
    with caplog.at_level(logging.WARNING, logger="bakeoff.data.prepare"):
        result = prepare_data(_spec(DataSource(uri=str(path)), max_instruction_tokens=50), seed=0,
                              out_dir=tmp_path / "out")
    assert result.dropped["too_long"] == 1 and result.token_count == "words"
    assert "counted in words" in caplog.text
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["token_count"] == "words"
    assert all("word word" not in ex["prompt"] for s in SPLITS for ex in read_split(tmp_path / "out", s))


@pytest.mark.parametrize(("tokenizers", "too_long", "name"), [
    ([Encoder()], 0, "Encoder"),  # 2 per word: at most about 40
    ([WordPieces()], 1, "chars"),  # one per character: the 250-character word is over 200
    ([Encoder(), WordPieces()], 1, "Encoder"),  # over the limit with any tokenizer; the first names the count
])
def test_too_long_with_tokenizers(tmp_path, caplog, tokenizers, too_long, name):
    # the instruction alone is counted (the seed's rule): one 250-character word
    path = _write(tmp_path / "d.jsonl", _rows(10) + [{"instruction": "x" * 250, "output": "long"}])
    with caplog.at_level(logging.WARNING, logger="bakeoff.data.prepare"):
        result = prepare_data(_spec(DataSource(uri=str(path)), max_instruction_tokens=200), seed=0,
                              out_dir=tmp_path / "out", tokenizers=tokenizers)
    assert result.dropped["too_long"] == too_long and result.token_count == name
    assert "counted in words" not in caplog.text


# --- splits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "n", "expected", "unused"), [
    ((6, 2, 2), 12, {"train": 6, "validation": 2, "test": 2}, 2),
    ((0.5, 0.25, 0.25), 12, {"train": 6, "validation": 3, "test": 3}, 0),
    ((0.7, 0.1, 0.1), 10, {"train": 7, "validation": 1, "test": 1}, 1),
    ((0.29, 0.3, 0.3), 100, {"train": 29, "validation": 30, "test": 30}, 11),
])
def test_split_counts_and_fractions(tmp_path, split, n, expected, unused):
    path = _write(tmp_path / "d.jsonl", _rows(n))
    result = prepare_data(_spec(DataSource(uri=str(path)), split=split), seed=3, out_dir=tmp_path / "out")
    assert result.rows == expected and result.unused == unused
    assert {s: len(read_split(tmp_path / "out", s)) for s in SPLITS} == expected


@pytest.mark.parametrize(("split", "message"), [
    ({"train": 0.8, "validation": 0.1, "test": 1}, "data.split: train, validation and test must all be counts"),
    ({"train": 0.8, "validation": 0.3, "test": 0.1}, "data.split: fractions sum to 1.2, more than 1"),
    ({"train": 1.5, "validation": 0.1, "test": 0.1}, "data.split: a fraction must be in (0, 1]"),
    ({"train": "x", "validation": 1, "test": 1}, "data.split.train: Input should be a valid number"),
    ({"train": 0.0, "validation": 0.5, "test": 0.5}, "data.split.train: Input should be greater than 0"),
])
def test_split_spec_errors(split, message):
    with pytest.raises(SpecError) as info:
        parse_spec({"name": "x", "arms": [{"name": "a", "model": "tiny://llama"}],
                    "data": {"sources": [{"uri": "a.jsonl"}], "split": split}})
    assert message in str(info.value)


def test_fraction_spec_round_trips_and_counts_stay_ints():
    counts, fractions = SplitSpec(train=8, validation=2, test=2), SplitSpec(train=0.8, validation=0.1, test=0.1)
    assert counts.model_dump() == {"train": 8, "validation": 2, "test": 2}
    assert type(counts.model_dump()["train"]) is int and not counts.is_fraction and fractions.is_fraction
    assert SplitSpec.model_validate_json(fractions.model_dump_json()) == fractions


def test_fraction_giving_an_empty_split_is_error(tmp_path):
    path = _write(tmp_path / "d.jsonl", _rows(5))
    with pytest.raises(DataError, match="a fraction gives an empty split"):
        prepare_data(_spec(DataSource(uri=str(path)), split=(0.8, 0.1, 0.1)), seed=0, out_dir=tmp_path / "o")


def test_fraction_split_is_deterministic(tmp_path):
    path = _write(tmp_path / "d.jsonl", _rows(30))
    data = _spec(DataSource(uri=str(path)), split=(0.6, 0.2, 0.2))
    prepare_data(data, seed=9, out_dir=tmp_path / "a")
    prepare_data(data, seed=9, out_dir=tmp_path / "b")
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# --- leakage ---------------------------------------------------------------------------------------


def _leaky(tmp_path, n_prompts: int = 10, extra: int = 0) -> Path:
    """Every prompt twice, with different answers: dedupe keeps both, so test leaks into train."""
    rows = [{"instruction": f"Tell me about {i}.", "output": f"{i} is fine{tag}"}
            for i in range(n_prompts) for tag in ("", " indeed")]
    rows += [{"instruction": f"Unique spare {i}.", "output": "ok"} for i in range(extra)]
    return _write(tmp_path / "leak.jsonl", rows)


@pytest.mark.parametrize("remove", [True, False])
def test_leakage_reported_and_removed(tmp_path, remove):
    path = _leaky(tmp_path)
    result = prepare_data(_spec(DataSource(uri=str(path)), split=(12, 2, 6), remove_leakage=remove),
                          seed=1, out_dir=tmp_path / "out")
    train = {normalise(ex["prompt"]) for ex in read_split(tmp_path / "out", "train")}
    test = read_split(tmp_path / "out", "test")
    leaked = sum(normalise(ex["prompt"]) in train for ex in test)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert result.leakage["test_in_train"] > 0 and stats["leakage"] == result.leakage
    if remove:
        assert leaked == 0 and result.leakage["removed"] == result.leakage["test_in_train"]
        assert len(test) == 6 - result.leakage["removed"] == result.rows["test"]
    else:
        assert leaked == result.leakage["test_in_train"] and len(test) == 6 and result.leakage["removed"] == 0


def test_leaked_test_examples_are_replaced_by_unused_rows(tmp_path):
    path = _leaky(tmp_path, n_prompts=6, extra=20)
    result = prepare_data(_spec(DataSource(uri=str(path)), split=(10, 2, 6)), seed=4, out_dir=tmp_path / "out")
    assert result.leakage["test_in_train"] > 0
    assert result.rows["test"] == 6
    train = {normalise(ex["prompt"]) for ex in read_split(tmp_path / "out", "train")}
    assert not any(normalise(ex["prompt"]) in train for ex in read_split(tmp_path / "out", "test"))
    assert result.unused == 32 - 18 - result.leakage["removed"]  # leaked examples are discarded


# --- token lengths ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "expected"), [
    ([], {"p50": 0, "p90": 0, "p99": 0, "max": 0}),
    ([5], {"p50": 5, "p90": 5, "p99": 5, "max": 5}),
    (list(range(1, 101)), {"p50": 50, "p90": 90, "p99": 99, "max": 100}),
    ([3, 1, 2, 10], {"p50": 2, "p90": 10, "p99": 10, "max": 10}),
])
def test_percentiles_nearest_rank(values, expected):
    assert percentiles(values) == expected


def test_token_lengths_per_split(tmp_path):
    rows = [{"instruction": "q " * (i + 1), "output": "a " * (i + 1)} for i in range(10)]
    path = _write(tmp_path / "d.jsonl", rows)
    result = prepare_data(_spec(DataSource(uri=str(path)), split=(6, 2, 2)), seed=0, out_dir=tmp_path / "out",
                          tokenizers=[Encoder()])
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["token_lengths"] == result.token_lengths and set(stats["token_lengths"]) == set(SPLITS)
    for split in SPLITS:
        exs = read_split(tmp_path / "out", split)
        response = sorted(2 * len(ex["reference"].split()) for ex in exs)
        prompt = sorted(2 * len(ex["prompt"].split()) for ex in exs)
        assert stats["token_lengths"][split]["response"]["max"] == response[-1]
        assert stats["token_lengths"][split]["prompt"] == percentiles(prompt)
    assert stats["token_count"] == "Encoder"


def test_token_limit_counts_with_the_arms_tokenizers(tmp_path, cache_env):
    from bakeoff.data.prepare import prepare_for_arms
    from bakeoff.models import load_tokenizer

    rows = [{"instruction": "Is 4 even or odd?", "input": "", "output": "even"},
            {"instruction": "Is 4 even or odd? " + "apple " * 80, "input": "", "output": "even"}] + [
        {"instruction": f"What is {i} plus 1?", "input": "", "output": str(i + 1)} for i in range(8)]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the long instruction's own tokens (no BOS, no template): the seed's rule keeps only shorter ones
    limit = len(load_tokenizer("tiny://llama")(rows[1]["instruction"], add_special_tokens=False)["input_ids"])
    data = DataSpec(sources=[DataSource(uri=str(src))], split=SplitSpec(train=5, validation=2, test=2),
                    max_instruction_tokens=limit)
    result = prepare_for_arms(data, ["tiny://llama", "tiny://mixtral"], 0, tmp_path / "out")
    assert result.dropped["too_long"] == 1
    assert result.token_count != "words"
