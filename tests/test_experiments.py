"""The shipped experiments: the offline ones prepare their data twice to the same bytes, from shipped files."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import ROOT

from bakeoff.artifacts import SPLITS, read_split
from bakeoff.cli import main
from bakeoff.spec import load_spec

OFFLINE = ["smoke.yaml", "smoke-sql.yaml", "smoke-viggo.yaml"]


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_experiment_prepares_reproducibly(name, tmp_path, cache_env):
    spec_path = str(ROOT / "experiments" / name)
    assert main(["prepare", spec_path, "--out", str(tmp_path / "a")]) == 0
    assert main(["prepare", spec_path, "--out", str(tmp_path / "b")]) == 0
    for file in [f"{s}.jsonl" for s in SPLITS] + ["stats.json"]:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    spec = load_spec(spec_path)
    for split in SPLITS:
        assert len(read_split(tmp_path / "a", split)) == getattr(spec.data.split, split)


def test_sql_fixture_answers_run_on_the_database_each_row_names(tmp_path, cache_env):
    assert main(["prepare", str(ROOT / "experiments" / "smoke-sql.yaml"), "--out", str(tmp_path)]) == 0
    rows = read_split(tmp_path, "test")
    assert rows and all(r["prompt"].startswith("You translate questions about a database into SQL") for r in rows)
    for row in rows:
        db = ROOT / "experiments" / "data" / "sql" / "databases" / f"{row['meta']['db_id']}.sqlite"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            assert conn.execute(row["reference"]).fetchall(), row["reference"]


@pytest.mark.parametrize(("kind", "target"), [("smoke", "smoke.jsonl"), ("viggo", "viggo.jsonl"), ("sql", "sql")])
def test_synth_data_regenerates_the_shipped_files(kind, target, tmp_path):
    out = tmp_path / target
    assert main(["synth-data", str(out), "--kind", kind]) == 0
    shipped = ROOT / "experiments" / "data" / target
    if kind == "sql":
        assert (out / "sql.jsonl").read_bytes() == (shipped / "sql.jsonl").read_bytes()
        assert sorted(p.name for p in (out / "databases").iterdir()) == \
            sorted(p.name for p in (shipped / "databases").iterdir())
    else:
        assert out.read_bytes() == shipped.read_bytes()
