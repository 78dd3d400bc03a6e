"""Tests for the data stage: the synthetic set, the prompt template, and prepare (local, s3://, hf://)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bakeoff.artifacts import SPLITS, read_split
from bakeoff.data.prepare import check_alpaca, prepare_data, read_source
from bakeoff.errors import DataError, SpecError
from bakeoff.fixtures.smoke import TASKS, iter_smoke_records, write_smoke_dataset
from bakeoff.spec import DataSource, DataSpec, SplitSpec
from bakeoff.templates import LLAMA2_INST_PREAMBLE, get_template

pytest_plugins = ["s3_fixture"]  # the moto S3 server and hf_offline fixtures

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "data" / "smoke.jsonl"

PREAMBLE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.")


def _records(n: int, seed: int = 0) -> list[dict]:
    return list(iter_smoke_records(n, seed))


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _data(*uris: str, train: int = 20, validation: int = 5, test: int = 5) -> DataSpec:
    return DataSpec(sources=[DataSource(uri=u) for u in uris],
                    split=SplitSpec(train=train, validation=validation, test=test))


@pytest.fixture
def small_jsonl(tmp_path) -> Path:
    return write_smoke_dataset(tmp_path / "src" / "small.jsonl", n=40, seed=3)


# --- synthetic -------------------------------------------------------------------------------------


def test_shipped_smoke_dataset_is_reproducible(tmp_path):
    path = write_smoke_dataset(tmp_path / "smoke.jsonl", n=1000, seed=0)
    assert path.read_bytes() == SMOKE.read_bytes()


def test_synthetic_records_shape_and_determinism():
    first, again, other = _records(60, 0), _records(60, 0), _records(60, 1)
    assert first == again
    assert first != other
    assert [r["task"] for r in first[:6]] == list(TASKS)
    for r in first:
        assert set(r) == {"instruction", "input", "output", "task"}
        assert r["instruction"] and r["output"] and r["input"] == ""
        if r["task"] == "add":
            assert r["output"].isdigit()
        if r["task"] == "parity":
            assert r["output"] in ("even", "odd")


# --- templates -------------------------------------------------------------------------------------


def test_llama2_inst_template_verbatim():
    assert LLAMA2_INST_PREAMBLE == PREAMBLE
    t = get_template("llama2-inst")
    assert t.prompt("What is 2 plus 2?") == f"[INST] {PREAMBLE}\n\nWhat is 2 plus 2? [/INST]\n\n"
    assert t.completion("4") == "4</s>"


def test_template_input_and_stripping():
    t = get_template("llama2-inst")
    assert t.prompt("  Translate.  ", " bonjour ") == f"[INST] {PREAMBLE}\n\nTranslate.\n\nbonjour [/INST]\n\n"
    assert t.prompt("Do it.", "   ") == f"[INST] {PREAMBLE}\n\nDo it. [/INST]\n\n"
    assert t.completion("  yes \n") == "yes</s>"


def test_unknown_template_is_spec_error():
    with pytest.raises(SpecError) as info:
        get_template("chatml")
    assert info.value.messages[0].startswith("data.template: unknown template 'chatml'")
    assert "llama2-inst" in info.value.messages[0]


# --- prepare: local files --------------------------------------------------------------------------


def test_prepare_writes_splits_and_stats(small_jsonl, tmp_path):
    out = tmp_path / "out"
    result = prepare_data(_data(str(small_jsonl), train=20, validation=5, test=7), seed=1, out_dir=out)
    assert result.rows == {"train": 20, "validation": 5, "test": 7}
    assert result.rows_read == {str(small_jsonl): 40}
    assert result.unused == 40 - 32
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "test.jsonl", "train.jsonl", "validation.jsonl"]
    sizes = {s: len(read_split(out, s)) for s in SPLITS}
    assert sizes == {"train": 20, "validation": 5, "test": 7}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows"] == sizes
    assert stats["dropped"] == {"empty_instruction": 0, "empty_response": 0}
    ids = [ex["id"] for s in SPLITS for ex in read_split(out, s)]
    assert len(ids) == len(set(ids)), "an example landed in two splits"
    t = get_template("llama2-inst")
    for ex in read_split(out, "train"):
        assert set(ex) >= {"id", "prompt", "completion", "instruction", "input", "reference", "source", "task"}
        assert ex["prompt"] == t.prompt(ex["instruction"], ex["input"])
        assert ex["completion"] == ex["reference"] + "</s>"
        assert ex["source"].startswith(f"{small_jsonl}:")


def test_prepare_is_deterministic(small_jsonl, tmp_path):
    data = _data(str(small_jsonl))
    prepare_data(data, seed=7, out_dir=tmp_path / "a")
    prepare_data(data, seed=7, out_dir=tmp_path / "b")
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "stats.json"):
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b, name


def test_different_seeds_give_different_splits(small_jsonl, tmp_path):
    data = _data(str(small_jsonl))
    prepare_data(data, seed=1, out_dir=tmp_path / "a")
    prepare_data(data, seed=2, out_dir=tmp_path / "b")
    test_a = [ex["id"] for ex in read_split(tmp_path / "a", "test")]
    test_b = [ex["id"] for ex in read_split(tmp_path / "b", "test")]
    assert test_a != test_b
    all_a = sorted(ex["id"] for s in SPLITS for ex in read_split(tmp_path / "a", s))
    all_b = sorted(ex["id"] for s in SPLITS for ex in read_split(tmp_path / "b", s))
    assert len(all_a) == len(all_b) == 30


def test_multiple_sources_are_concatenated(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", _records(10, 0))
    b = _write_jsonl(tmp_path / "b.jsonl", _records(10, 1))
    result = prepare_data(_data(str(a), str(b), train=12, validation=4, test=4), seed=0, out_dir=tmp_path / "out")
    assert result.rows_read == {str(a): 10, str(b): 10}
    sources = {ex["source"].rsplit(":", 1)[0] for s in SPLITS for ex in read_split(tmp_path / "out", s)}
    assert sources == {str(a), str(b)}


def test_too_few_rows(small_jsonl, tmp_path):
    with pytest.raises(DataError) as info:
        prepare_data(_data(str(small_jsonl), train=30, validation=10, test=10), seed=0, out_dir=tmp_path / "out")
    msg = str(info.value)
    assert msg.startswith("data.split: ")
    assert "50" in msg and "40" in msg


def test_broken_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    lines = [json.dumps(r) for r in _records(3)]
    lines.insert(2, '{"instruction": "x", "output": ')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        read_source(DataSource(uri=str(path)))
    assert f"{path}:3: not valid JSON" in str(info.value)


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    path = tmp_path / "blank.jsonl"
    rows = _records(2)
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    assert read_source(DataSource(uri=str(path))) == [(f"{path}:1", rows[0]), (f"{path}:3", rows[1])]


def test_missing_output_names_file_row_and_field(tmp_path):
    rows = _records(4)
    del rows[1]["output"]
    path = _write_jsonl(tmp_path / "missing.jsonl", rows)
    with pytest.raises(DataError) as info:
        prepare_data(_data(str(path), train=1, validation=1, test=1), seed=0, out_dir=tmp_path / "out")
    assert str(info.value) == f"{path}:2: field 'output' is missing (columns present: input, instruction, task)"


@pytest.mark.parametrize(("record", "expected"), [
    ({"instruction": "x", "output": 3}, "field 'output' must be a string, got int"),
    ({"instruction": ["x"], "output": "y"}, "field 'instruction' must be a string, got list"),
    ({"instruction": "x", "input": {"a": 1}, "output": "y"}, "field 'input' must be a string, got dict"),
    ({"output": "y"}, "field 'instruction' is missing (columns present: output)"),
    ({"instruction": None, "output": "y"}, "field 'instruction' is missing (columns present: output)"),
    (["x", "y"], "expected a JSON object, got list"),
    ("just a string", "expected a JSON object, got str"),
])
def test_check_alpaca_errors(record, expected):
    with pytest.raises(DataError) as info:
        check_alpaca("f.jsonl:9", record)
    assert str(info.value) == f"f.jsonl:9: {expected}"


def test_check_alpaca_optional_input():
    assert check_alpaca("l", {"instruction": "i", "output": "o"}) == ("i", "", "o")
    assert check_alpaca("l", {"instruction": "i", "input": None, "output": "o"}) == ("i", "", "o")
    assert check_alpaca("l", {"instruction": "i", "input": "x", "output": "o", "extra": 1}) == ("i", "x", "o")


def test_non_string_field_in_file_is_data_error(tmp_path):
    rows = _records(4)
    rows[3]["output"] = 12
    path = _write_jsonl(tmp_path / "types.jsonl", rows)
    with pytest.raises(DataError) as info:
        prepare_data(_data(str(path), train=1, validation=1, test=1), seed=0, out_dir=tmp_path / "out")
    assert str(info.value) == f"{path}:4: field 'output' must be a string, got int"


def test_empty_rows_are_dropped_and_counted(tmp_path):
    rows = _records(12)
    rows[0]["output"] = "   "
    rows[1]["output"] = ""
    rows[2]["instruction"] = " "
    path = _write_jsonl(tmp_path / "empty.jsonl", rows)
    out = tmp_path / "out"
    result = prepare_data(_data(str(path), train=5, validation=2, test=2), seed=0, out_dir=out)
    assert result.dropped == {"empty_instruction": 1, "empty_response": 2}
    assert result.unused == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["dropped"] == {"empty_instruction": 1, "empty_response": 2}
    assert stats["rows_read"] == {str(path): 12}
    refs = {ex["reference"] for s in SPLITS for ex in read_split(out, s)}
    assert "" not in refs


def test_missing_and_non_jsonl_local_sources(tmp_path):
    with pytest.raises(DataError) as info:
        read_source(DataSource(uri=str(tmp_path / "nope.jsonl")))
    assert str(info.value) == f"data source {tmp_path / 'nope.jsonl'}: file not found"
    txt = tmp_path / "data.txt"
    txt.write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        read_source(DataSource(uri=str(txt)))


def test_read_split_missing(tmp_path):
    with pytest.raises(DataError) as info:
        read_split(tmp_path, "test")
    assert "test.jsonl: missing" in str(info.value)


# --- prepare: s3:// and hf:// ----------------------------------------------------------------------


def test_s3_source_matches_local_file(s3, small_jsonl, tmp_path):
    uri = s3.put_file("datasets/small.jsonl", small_jsonl)
    local_rows = [r for _, r in read_source(DataSource(uri=str(small_jsonl)))]
    s3_rows = read_source(DataSource(uri=uri))
    assert [r for _, r in s3_rows] == local_rows
    assert s3_rows[0][0] == f"{uri}/small.jsonl:1"

    data_local, data_s3 = _data(str(small_jsonl)), _data(uri)
    prepare_data(data_local, seed=5, out_dir=tmp_path / "local")
    prepare_data(data_s3, seed=5, out_dir=tmp_path / "s3")
    for split in SPLITS:
        a = [{k: v for k, v in ex.items() if k != "source"} for ex in read_split(tmp_path / "local", split)]
        b = [{k: v for k, v in ex.items() if k != "source"} for ex in read_split(tmp_path / "s3", split)]
        assert a == b, split


def test_s3_prefix_reads_every_jsonl(s3, tmp_path):
    first, second = _records(5, 0), _records(4, 1)
    s3.put_bytes("pre/a.jsonl", "".join(json.dumps(r) + "\n" for r in first).encode())
    s3.put_bytes("pre/sub/b.jsonl", "".join(json.dumps(r) + "\n" for r in second).encode())
    s3.put_bytes("pre/README.txt", b"not data")
    rows = read_source(DataSource(uri=f"s3://{s3.bucket}/pre/"))
    assert [r for _, r in rows] == first + second
    assert rows[-1][0] == f"s3://{s3.bucket}/pre/sub/b.jsonl:4"


def test_s3_broken_line_names_object_and_line(s3):
    uri = s3.put_bytes("bad/x.jsonl", b'{"instruction": "a", "output": "b"}\n{oops\n')
    with pytest.raises(DataError) as info:
        read_source(DataSource(uri=uri))
    assert "x.jsonl:2: not valid JSON" in str(info.value)


def test_s3_missing_object_and_bucket(s3):
    with pytest.raises(DataError) as info:
        read_source(DataSource(uri=f"s3://{s3.bucket}/nothing/here.jsonl"))
    assert f"s3://{s3.bucket}/nothing/here.jsonl" in str(info.value)
    with pytest.raises(DataError) as info:
        read_source(DataSource(uri="s3://no-such-bucket-xyz/a.jsonl"))
    assert "NoSuchBucket" in str(info.value)


def test_s3_without_endpoint_is_clear(monkeypatch):
    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(DataError) as info:
        read_source(DataSource(uri="s3://bucket/data.jsonl"))
    msg = str(info.value)
    assert msg.startswith("data source s3://bucket/data.jsonl: ")
    assert "S3_ENDPOINT" in msg


def test_hf_source_offline_fails_with_hint(hf_offline, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DataError) as info:
        read_source(DataSource(uri="hf://some-org/some-dataset"))
    msg = str(info.value)
    assert msg.startswith("data source hf://some-org/some-dataset: ")
    assert "Hugging Face Hub" in msg
    assert "s3://" in msg and "local JSONL" in msg


def test_malformed_hf_uri():
    with pytest.raises(DataError) as info:
        read_source(DataSource(uri="hf://a/b/c"))
    assert "expected hf://org/name" in str(info.value)
