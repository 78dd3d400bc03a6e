"""The offline fixture sets: text-to-SQL with SQLite databases, and ViGGO-style meaning representations."""

from __future__ import annotations

import re
import sqlite3

import pytest

from bakeoff.fixtures.sql import DOMAINS, iter_sql_records, write_sql_fixture
from bakeoff.fixtures.viggo import iter_viggo_records, write_viggo_fixture
from bakeoff.jsonl import read_jsonl

MR = re.compile(r"^(\w+)\((\w+\[[^\]]*\](, )?)+\)$")
NAME = re.compile(r"\bname\[([^\]]*)\]")
TABLES_USED = re.compile(r"\b(?:FROM|JOIN)\s+(\w+)", re.IGNORECASE)


@pytest.fixture(scope="module")
def sql_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sql")
    write_sql_fixture(out, n=400, seed=0)
    return out


def test_sql_fixture_is_byte_identical_across_writes(sql_dir, tmp_path):
    again = tmp_path / "again"
    write_sql_fixture(again, n=400, seed=0)
    assert (again / "sql.jsonl").read_bytes() == (sql_dir / "sql.jsonl").read_bytes()
    for domain in DOMAINS:
        name = f"databases/{domain.db_id}.sqlite"
        assert (again / name).read_bytes() == (sql_dir / name).read_bytes(), name
    # writing over an existing fixture gives the same bytes too
    write_sql_fixture(again, n=400, seed=0)
    for domain in DOMAINS:
        name = f"databases/{domain.db_id}.sqlite"
        assert (again / name).read_bytes() == (sql_dir / name).read_bytes(), name


def test_sql_records_shape_count_and_distinct_questions(sql_dir):
    records = read_jsonl(sql_dir / "sql.jsonl")
    assert len(records) == 400
    assert all(set(r) == {"question", "context", "answer", "db_id"} for r in records)
    assert len({r["question"] for r in records}) == len(records)
    assert {r["db_id"] for r in records} == {d.db_id for d in DOMAINS}
    answers = " ".join(r["answer"] for r in records)
    for word in ("COUNT(*)", "WHERE", "MAX(", "MIN(", "AVG(", "ORDER BY", "LIMIT 1", "GROUP BY", "JOIN"):
        assert word in answers, word


def test_every_sql_answer_runs_and_returns_rows(sql_dir):
    records = read_jsonl(sql_dir / "sql.jsonl")
    conns = {d.db_id: sqlite3.connect(sql_dir / "databases" / f"{d.db_id}.sqlite") for d in DOMAINS}
    try:
        for r in records:
            rows = conns[r["db_id"]].execute(r["answer"]).fetchall()
            assert rows, r
    finally:
        for conn in conns.values():
            conn.close()


def test_sql_context_declares_every_table_the_answer_uses(sql_dir):
    for r in read_jsonl(sql_dir / "sql.jsonl"):
        tables = set(TABLES_USED.findall(r["answer"]))
        assert tables
        for table in tables:
            assert f"CREATE TABLE {table} (" in r["context"], r


def test_sql_context_matches_the_database_schema(sql_dir):
    for domain in DOMAINS:
        conn = sqlite3.connect(sql_dir / "databases" / f"{domain.db_id}.sqlite")
        try:
            ddl = {sql for (sql,) in conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
        assert ddl == {t.ddl for t in domain.tables}
    for r in read_jsonl(sql_dir / "sql.jsonl"):
        domain = next(d for d in DOMAINS if d.db_id == r["db_id"])
        assert set(r["context"].split("; ")) <= {t.ddl for t in domain.tables}


def test_sql_tables_are_small(sql_dir):
    for domain in DOMAINS:
        conn = sqlite3.connect(sql_dir / "databases" / f"{domain.db_id}.sqlite")
        try:
            for table in domain.tables:
                (count,) = conn.execute(f"SELECT COUNT(*) FROM {table.name}").fetchone()
                assert 5 <= count <= 40, (domain.db_id, table.name, count)
        finally:
            conn.close()


def test_sql_records_are_deterministic_and_seeded():
    assert list(iter_sql_records(50, seed=3)) == list(iter_sql_records(50, seed=3))
    assert list(iter_sql_records(50, seed=3)) != list(iter_sql_records(50, seed=4))


def test_sql_too_many_records_raises():
    with pytest.raises(ValueError, match="distinct questions"):
        list(iter_sql_records(100_000))


def test_viggo_fixture_is_deterministic_with_distinct_sentences(tmp_path):
    a = write_viggo_fixture(tmp_path / "a" / "viggo.jsonl", n=400, seed=0)
    b = write_viggo_fixture(tmp_path / "b" / "viggo.jsonl", n=400, seed=0)
    assert a.read_bytes() == b.read_bytes()
    records = read_jsonl(a)
    assert len(records) == 400
    assert all(set(r) == {"target", "meaning_representation"} for r in records)
    assert len({r["target"] for r in records}) == len(records)
    assert list(iter_viggo_records(30, seed=1)) != list(iter_viggo_records(30, seed=2))


def test_viggo_meaning_representations_parse_and_name_the_game():
    records = list(iter_viggo_records(400, seed=0))
    acts = set()
    for r in records:
        m = MR.match(r["meaning_representation"])
        assert m, r
        acts.add(m.group(1))
        for name in NAME.findall(r["meaning_representation"]):
            assert name in r["target"], r
    assert {"inform", "request", "confirm", "give_opinion", "recommend", "suggest", "verify_attribute",
            "request_explanation"} <= acts
