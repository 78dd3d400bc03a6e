"""A new user's mistakes (issue 18): every probe ends in one clear line per problem and exit 1 or 2, never a
traceback (``--debug`` shows one); bad data names its file, row and field; no partial output is left behind."""

from __future__ import annotations

import csv
import datetime
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bakeoff import cli
from bakeoff.cli import main
from bakeoff.jsonl import read_jsonl, write_jsonl

ROWS = [{"instruction": f"question {i}", "input": "", "output": f"answer {i}"} for i in range(10)]


def _spec_file(tmp_path: Path, name: str = "spec.yaml", **changes) -> Path:
    """A small valid spec (a local arm, counts 4/2/2 on ``data.jsonl``) with ``changes`` merged in by section."""
    spec = {"name": "probe", "data": {"sources": [{"uri": "data.jsonl"}], "split": {"train": 4, "validation": 2,
                                                                                     "test": 2}},
            "training": {"batch_size": 2}, "arms": [{"name": "tiny-llama", "model": "tiny://llama"}]}
    for key, value in changes.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _err_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()]


# --- 4. validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("yaml_text", "line"), [
    ("data: {split: {train: .nan, validation: 0.1, test: 0.1}}", "data.split.train: Input should be a finite number"),
    ("training: {epochs: .inf}", "training.epochs: Input should be a finite number"),
    ("training: {learning_rate: -.inf}", "training.learning_rate: Input should be a finite number"),
    ("peft: {alpha: .nan}", "peft.alpha: Input should be a finite number"),
    ("cost: {gpu_hour_usd: .nan}", "cost.gpu_hour_usd: Input should be a finite number"),
    ("seed: -1", "seed: Input should be greater than or equal to 0"),
    ("seed: 4294967296", "seed: Input should be less than or equal to 4294967295"),
    ("training: {batch_size: true}", "training.batch_size: must be a number, not a boolean (true)"),
    ("training: {learning_rate: true}", "training.learning_rate: must be a number, not a boolean (true)"),
    ("generation: {batch_size: false}", "generation.batch_size: must be a number, not a boolean (false)"),
    ("resources: {finetune: {gpu: {count: true}}}",
     "resources.finetune.gpu.count: must be a number, not a boolean (true)"),
    ("training: {batch_size: 100000000000000000000}", "training.batch_size: Input should be less than or equal to "
                                                      "65536"),
    ("training: {batch_size: 5}", "training.batch_size: 5 rows per step is more than the whole train split "
                                  "(data.split.train: 4 rows); use at most 4"),
], ids=["nan-split", "inf-epochs", "neg-inf-lr", "nan-alpha", "nan-price", "seed-negative", "seed-2**32",
        "bool-batch", "bool-lr", "bool-generation-batch", "bool-gpu-count", "absurd-batch",
        "batch-over-train"])
def test_validate_refuses_with_the_key_path(tmp_path, capsys, yaml_text, line):
    base = yaml.safe_load(_spec_file(tmp_path).read_text())
    for key, value in yaml.safe_load(yaml_text).items():  # merge one level down, as _spec_file does
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(base))
    assert main(["validate", str(path)]) == 2
    assert _err_lines(capsys) == [f"{path}: {line}"]


def test_an_arm_override_and_a_hosted_arm_refuse_non_finite_numbers(tmp_path, capsys):
    hosted = {"name": "gpt", "kind": "openai", "model": "gpt-4o-mini-2024-07-18",
              "hosted": {"usd_per_1m_training_tokens": 3, "learning_rate_multiplier": float("inf")}}
    local = {"name": "tiny-llama", "model": "tiny://llama", "peft": {"dropout": float("nan")}}
    path = _spec_file(tmp_path, arms=[local, hosted])
    assert main(["validate", str(path)]) == 2
    assert _err_lines(capsys) == [f"{path}: arms[0].peft.dropout: Input should be a finite number",
                                  f"{path}: arms[1].hosted.learning_rate_multiplier: must be a positive number or "
                                  "'auto'; got inf"]


def test_every_problem_is_one_line(tmp_path, capsys):
    path = _spec_file(tmp_path, seed=-3, training={"batch_size": True, "epochs": float("inf")})
    assert main(["validate", str(path)]) == 2
    assert _err_lines(capsys) == [f"{path}: seed: Input should be greater than or equal to 0",
                                  f"{path}: training.epochs: Input should be a finite number",
                                  f"{path}: training.batch_size: must be a number, not a boolean (true)"]


def test_limits_themselves_and_booleans_where_booleans_belong_pass(tmp_path, capsys):
    path = _spec_file(tmp_path, seed=2**32 - 1, training={"batch_size": 4, "gradient_checkpointing": True})
    assert main(["validate", str(path)]) == 0
    assert "seed 4294967295" in capsys.readouterr().out


def test_a_spec_that_is_not_utf8_or_nested_too_deep(tmp_path, capsys):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    assert main(["validate", str(latin)]) == 2
    assert _err_lines(capsys) == [f"{latin}: (root): not UTF-8 text (byte 0xe9 at line 1, column 10); save the spec "
                                  "as UTF-8"]
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert main(["validate", str(deep)]) == 2
    assert _err_lines(capsys) == [f"{deep}: (root): nested too deeply to read (a spec is a few levels of mappings "
                                  "and lists)"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    assert main(["validate", str(broken)]) == 2
    assert _err_lines(capsys) == [f"{broken}: (root): not valid YAML: expected ',' or ']', but got '<stream end>' at "
                                  "line 2, column 1"]


# --- 5. data ----------------------------------------------------------------------------------------------------


def _prepare(tmp_path: Path, capsys, uri: str, expect: int = 1, **source) -> tuple[list[str], Path]:
    """``bakeoff prepare`` of one source; (stderr lines, output folder). A failure leaves no split behind."""
    on_error = source.pop("on_error", "fail")
    path = _spec_file(tmp_path, data={"sources": [{"uri": uri, **source}], "on_error": on_error})
    out = tmp_path / "out"
    assert main(["prepare", str(path), "--out", str(out)]) == expect
    lines = _err_lines(capsys)
    if expect:
        assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    return lines, out


def _jsonl_with(tmp_path: Path, line3: bytes, name: str = "data.jsonl") -> Path:
    lines = [json.dumps(r).encode() for r in ROWS]
    lines[2] = line3
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_bytes_that_are_not_utf8_name_the_row_and_field(tmp_path, capsys):
    path = _jsonl_with(tmp_path, b'{"instruction": "caf\xe9", "input": "", "output": "x"}')
    lines, _ = _prepare(tmp_path, capsys, str(path))
    assert lines == [f"error: {path}:3: field 'instruction' is not valid UTF-8 (byte 0xe9 at character 4); save the "
                     "file as UTF-8"]
    csv_path = tmp_path / "data.csv"
    csv_path.write_bytes(b"instruction,input,output\n" + b"".join(f"q{i},,a{i}\n".encode() for i in range(7))
                         + b"q7,,caf\xe9\n")
    lines, _ = _prepare(tmp_path, capsys, str(csv_path))
    assert lines == [f"error: {csv_path}:8: field 'output' is not valid UTF-8 (byte 0xe9 at character 4); save the "
                     "file as UTF-8"]


def test_skip_counts_a_row_that_is_not_utf8(tmp_path, capsys, caplog):
    path = _jsonl_with(tmp_path, b'{"instruction": "caf\xe9", "input": "", "output": "x"}')
    with caplog.at_level(logging.WARNING, logger="bakeoff.data.prepare"):
        _, out = _prepare(tmp_path, capsys, str(path), expect=0, on_error="skip")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["dropped"]["malformed"] == 1 and stats["rows_read"] == {str(path): 10}
    assert f"skipped malformed row {path}:3: field 'instruction' is not valid UTF-8" in caplog.text


def test_half_a_surrogate_pair_is_named(tmp_path, capsys):
    path = _jsonl_with(tmp_path, b'{"instruction": "a \\ud83d b", "input": "", "output": "x"}')
    lines, _ = _prepare(tmp_path, capsys, str(path))
    assert lines == [f"error: {path}:3: field 'instruction' holds half of a UTF-16 surrogate pair (\\ud83d at "
                     "character 3), which is not text"]


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path, capsys):
    path = tmp_path / "bom.csv"
    with path.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.DictWriter(fh, ["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(ROWS)
    _, out = _prepare(tmp_path, capsys, str(path), expect=0)
    assert {r["instruction"] for r in read_jsonl(out / "train.jsonl")} <= {r["instruction"] for r in ROWS}
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in ROWS).encode())
    _prepare(tmp_path, capsys, str(jsonl), expect=0)


def test_a_csv_row_with_extra_fields_is_refused_or_counted(tmp_path, capsys):
    path = tmp_path / "extra.csv"
    path.write_text("instruction,input,output\n" + "".join(f"q{i},,a{i}\n" for i in range(8)) + "q8,,a, b\n")
    lines, _ = _prepare(tmp_path, capsys, str(path))
    assert lines == [f"error: {path}:9: 4 fields, but the header has 3 columns (a value with a comma that is not "
                     "quoted?)"]
    _, out = _prepare(tmp_path, capsys, str(path), expect=0, on_error="skip")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["dropped"]["malformed"] == 1 and stats["rows_read"] == {str(path): 9}


def test_a_json_file_holding_an_object(tmp_path, capsys):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": ROWS}, indent=2))
    lines, _ = _prepare(tmp_path, capsys, str(path))
    assert lines == [f"error: {path}: holds one JSON object (keys: data), not records: a .json file is an array of "
                     "objects ([{...}, {...}]) or one object per line; its records seem to be under 'data'"]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_nested_too_deep(tmp_path, capsys, suffix):
    deep = "[" * 100_000 + "]" * 100_000
    if suffix == ".json":
        path = tmp_path / "deep.json"
        path.write_text("[" + deep + "]")
        expected = f"error: {path}: not a valid JSON array (nested too deeply at line 1)"
    else:
        path = _jsonl_with(tmp_path, deep.encode(), "deep.jsonl")
        expected = f"error: {path}:3: not valid JSON (nested too deeply at column 1)"
    lines, _ = _prepare(tmp_path, capsys, str(path))
    assert lines == [expected]


@pytest.mark.parametrize(("column", "shown"), [("blob", "bytes b'x'"),
                                               ("when", "datetime datetime.datetime(2024, 1, 1, 0, 0)")])
def test_keep_of_a_column_json_cannot_hold(tmp_path, capsys, column, shown):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"instruction": [r["instruction"] for r in ROWS], "output": [r["output"] for r in ROWS],
                             "blob": [b"x"] * len(ROWS), "when": [datetime.datetime(2024, 1, 1)] * len(ROWS)}), path)
    lines, _ = _prepare(tmp_path, capsys, str(path), format="alpaca", keep=[column])
    assert lines == [f"error: {path}:1: field '{column}' (in keep) is {shown}, which a JSON example cannot hold; "
                     "keep only text, number, boolean or null columns (convert it to text in the file, e.g. a date "
                     "as 2024-01-31)"]


def test_a_folder_as_a_data_path(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    lines, _ = _prepare(tmp_path, capsys, str(folder))
    assert lines == [f"error: data source {folder}: no .jsonl, .json, .csv, .parquet files with rows found"]
    write_jsonl(folder / "a.jsonl", ROWS[:4])
    write_jsonl(folder / "b.jsonl", ROWS[4:])
    _, out = _prepare(tmp_path, capsys, str(folder), expect=0)
    assert json.loads((out / "stats.json").read_text())["rows_read"] == {str(folder): 10}


def test_a_file_is_written_whole_or_not_at_all(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_jsonl(path, [ROWS[0], {"bad": b"bytes"}])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]  # no temporary file left


def test_the_prepared_splits_are_written_all_or_none(tmp_path):
    from bakeoff.artifacts import write_prepared

    write_prepared(tmp_path, {"train": ROWS[:6], "validation": ROWS[6:8], "test": ROWS[8:]}, {"run": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(TypeError):  # the last split cannot be written: none of the new files replaces an old one
        write_prepared(tmp_path, {"train": ROWS[:2], "validation": ROWS[2:4], "test": [{"bad": b"bytes"}]}, {"run": 2})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_read_jsonl_names_the_broken_line_and_keeps_unicode_line_separators(tmp_path):
    from bakeoff.errors import DataError

    path = write_jsonl(tmp_path / "x.jsonl", [{"a": "one\u2028two\x85three"}])
    assert read_jsonl(path) == [{"a": "one\u2028two\x85three"}]
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=r"x.jsonl:2: not valid JSON \(Expecting value\)"):
        read_jsonl(path)


# --- 6. the command line ----------------------------------------------------------------------------------------


def test_evaluate_with_missing_generations(tmp_path, capsys):
    path = _spec_file(tmp_path)
    assert main(["evaluate", str(path), "--arm", "tiny-llama", "--generations", str(tmp_path / "MISSING"),
                 "--out", str(tmp_path / "scores")]) == 1
    assert _err_lines(capsys) == [f"error: {tmp_path / 'MISSING'}/generations.jsonl: missing; was the generate stage "
                                  f"run into {tmp_path / 'MISSING'}?"]


def test_an_existing_file_as_an_output_folder(tmp_path, capsys):
    existing = tmp_path / "results.txt"
    existing.write_text("x")
    for argv in (["run", str(_spec_file(tmp_path)), "--out", str(existing)],
                 ["prepare", str(_spec_file(tmp_path)), "--out", str(existing)]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert _err_lines(capsys) == [f"bakeoff {argv[0]}: error: argument --out: {existing} is a file; give a folder "
                                      f"(it is created if missing) (see bakeoff {argv[0]} --help)"]


@pytest.mark.parametrize(("content", "line"), [
    ("not json", "cannot read results JSON: Expecting value: line 1 column 1 (char 0)"),
    ("[1, 2]", "not a bakeoff results.json of schema version 1 to 2 (found a JSON list); it is the report stage's "
               "results.json (runs/NAME/results.json)"),
    ('{"a": 1}', "not a bakeoff results.json of schema version 1 to 2 (found no schema_version); it is the report "
                 "stage's results.json (runs/NAME/results.json)"),
    ('{"schema_version": 1, "rows": "x"}', "malformed results.json (AttributeError: 'str' object has no attribute "
                                           "'get'); see docs/results-schema.md"),
], ids=["not-json", "a-list", "no-version", "rows-a-string"])
def test_report_on_a_malformed_results_json(tmp_path, capsys, content, line):
    path = tmp_path / "results.json"
    path.write_text(content)
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 1
    assert _err_lines(capsys) == [f"error: {path}: {line}"]


@pytest.mark.parametrize("n", ["-5", "0", "many"])
def test_synth_data_refuses_a_count_below_one(tmp_path, capsys, n):
    with pytest.raises(SystemExit) as info:
        main(["synth-data", str(tmp_path / "d.jsonl"), "--n", n])
    assert info.value.code == 2
    [line] = _err_lines(capsys)
    assert line.startswith("bakeoff synth-data: error: argument --n: ")
    assert line.endswith("(see bakeoff synth-data --help)")
    assert not (tmp_path / "d.jsonl").exists()


def test_synth_data_overwrites_only_with_force(tmp_path, capsys):
    path = tmp_path / "smoke.jsonl"
    path.write_text("mine\n")
    assert main(["synth-data", str(path), "--n", "3"]) == 1
    assert _err_lines(capsys) == [f"error: {path}: exists; pass --force to overwrite it"]
    assert path.read_text() == "mine\n"
    assert main(["synth-data", str(path), "--n", "3", "--force"]) == 0
    assert capsys.readouterr().out.strip() == f"overwrote {path} with 3 smoke records"
    assert len(read_jsonl(path)) == 3
    (tmp_path / "sql").mkdir()
    (tmp_path / "sql" / "sql.jsonl").write_text("mine\n")
    assert main(["synth-data", str(tmp_path / "sql"), "--kind", "sql"]) == 1
    assert _err_lines(capsys) == [f"error: {tmp_path / 'sql' / 'sql.jsonl'}: exists; pass --force to overwrite it"]


def test_debug_shows_the_traceback(tmp_path, capsys):
    path = _spec_file(tmp_path, seed=-1)
    for argv in (["--debug", "validate", str(path)], ["validate", str(path), "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.rstrip().endswith(f"{path}: seed: Input should be greater than or equal to 0")


def test_an_unexpected_error_is_one_line_that_says_so(tmp_path, capsys, monkeypatch):
    def broken(args):
        raise KeyError("reference")

    monkeypatch.setattr(cli, "_cmd_validate", broken)
    assert main(["validate", str(_spec_file(tmp_path))]) == 1
    assert _err_lines(capsys) == ["error: unexpected KeyError: 'reference' (bakeoff did not expect this; rerun with "
                                  "--debug for the traceback)"]


@pytest.fixture
def logger_levels():
    names = ("httpx", "httpx2", "httpcore", "openai")
    saved = {name: logging.getLogger(name).level for name in names}
    yield names
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def test_http_request_logs_are_quiet_unless_verbose(tmp_path, capsys, logger_levels):
    path = _spec_file(tmp_path)
    for name in logger_levels:
        logging.getLogger(name).setLevel(logging.NOTSET)
    assert main(["validate", str(path), "-v"]) == 0
    assert all(logging.getLogger(name).level == logging.NOTSET for name in logger_levels)
    assert main(["validate", str(path)]) == 0
    assert all(logging.getLogger(name).level == logging.WARNING for name in logger_levels)


def test_the_console_script_prints_no_traceback(tmp_path):
    """The same through a process of its own: bad bytes in the data, and a spec nested 100,000 deep."""
    path = _jsonl_with(tmp_path, b'{"instruction": "caf\xe9", "input": "", "output": "x"}')
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "{a: " * 100_000 + "1" + "}" * 100_000 + "\n")
    script = "import sys; from bakeoff.cli import main; sys.exit(main())"
    for argv, code, line in (
        (["prepare", str(_spec_file(tmp_path)), "--out", str(tmp_path / "out")], 1,
         f"error: {path}:3: field 'instruction' is not valid UTF-8 (byte 0xe9 at character 4); save the file as UTF-8"),
        (["validate", str(deep)], 2, f"{deep}: (root): nested too deeply to read (a spec is a few levels of mappings "
                                     "and lists)"),
    ):
        done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == code, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1] == line
