"""Table-driven tests of SQL execution accuracy (bakeoff.evaluate.sql)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from bakeoff.errors import EvaluationError
from bakeoff.evaluate.sql import (
    execution_match,
    execution_match_schema,
    first_statement,
    has_top_level_order_by,
    literals_from,
    results_match,
    schema_databases,
    split_statements,
)

ROOT = Path(__file__).resolve().parents[1]
SQL_DIR = ROOT / "experiments" / "data" / "sql"


@pytest.fixture
def db(tmp_path) -> Path:
    """t(a INTEGER, b TEXT, c REAL) with a repeated row; u(k INTEGER, s TEXT)."""
    path = tmp_path / "t.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE t (a INTEGER, b TEXT, c REAL);
        INSERT INTO t VALUES (1, 'x', 1.0), (2, 'y', 2.5), (2, 'y', 2.5), (3, 'z', 3.0);
        CREATE TABLE u (k INTEGER, s TEXT);
        INSERT INTO u VALUES (1, '1'), (2, 'two');
        """
    )
    conn.commit()
    conn.close()
    return path


def _count(path: Path, table: str = "t") -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


CASES = [
    # (rule, gold, pred, expected)
    ("identical", "SELECT a FROM t", "SELECT a FROM t", True),
    ("rows are a multiset without ORDER BY", "SELECT a FROM t", "SELECT a FROM t ORDER BY a DESC", True),
    ("multiplicity counts", "SELECT a FROM t", "SELECT a FROM t WHERE a <> 1 UNION ALL SELECT 1", True),
    ("a missing duplicate is no match", "SELECT a FROM t", "SELECT a FROM t WHERE rowid <> 2", False),
    ("order counts with ORDER BY", "SELECT a FROM t ORDER BY a", "SELECT a FROM t ORDER BY a DESC", False),
    ("same order with ORDER BY", "SELECT a FROM t ORDER BY a", "SELECT a FROM t ORDER BY a ASC", True),
    ("lower-case order by", "select a from t order by a", "SELECT a FROM t ORDER BY a DESC", False),
    (
        "ORDER BY inside a subquery does not count",
        "SELECT a FROM (SELECT a FROM t ORDER BY a)",
        "SELECT a FROM t ORDER BY a DESC",
        True,
    ),
    ("ORDER BY inside a literal does not count", "SELECT a, 'order by' FROM t", "SELECT a, 'order by' FROM t", True),
    ("column order is free", "SELECT a, b FROM t", "SELECT b, a FROM t", True),
    ("column permutation keeps rows together", "SELECT a, b FROM t", "SELECT b, a FROM t ORDER BY a DESC", True),
    ("permuted columns, ordered", "SELECT a, b FROM t ORDER BY a", "SELECT b, a FROM t ORDER BY a", True),
    ("column names are ignored", "SELECT a AS first FROM t", "SELECT a AS other FROM t", True),
    ("wrong column", "SELECT a FROM t", "SELECT b FROM t", False),
    ("extra column", "SELECT a FROM t", "SELECT a, b FROM t", False),
    ("DISTINCT kept as written", "SELECT DISTINCT a FROM t", "SELECT a FROM t", False),
    ("DISTINCT vs GROUP BY", "SELECT DISTINCT a FROM t", "SELECT a FROM t GROUP BY a", True),
    ("1 equals 1.0", "SELECT COUNT(*) FROM t", "SELECT 4.0", True),
    ("integral REAL column equals integers", "SELECT c FROM t WHERE a <> 2", "SELECT a FROM t WHERE a <> 2", True),
    ("2.5 is not 2", "SELECT c FROM t WHERE a = 2", "SELECT a FROM t WHERE a = 2", False),
    ("a string is not a number", "SELECT s FROM u WHERE k = 1", "SELECT k FROM u WHERE k = 1", False),
    ("NULL equals NULL", "SELECT NULL", "SELECT NULL", True),
    ("both empty", "SELECT a FROM t WHERE a > 9", "SELECT b, c FROM t WHERE a > 9", True),
    ("first statement only", "SELECT a FROM t", "SELECT a FROM t; SELECT b FROM t", True),
    ("semicolon in a literal does not split", "SELECT 'a;b'", "SELECT 'a;b'", True),
    ("pred syntax error", "SELECT a FROM t", "SELEC a FROM t", False),
    ("pred unknown table", "SELECT a FROM t", "SELECT a FROM nope", False),
    ("empty pred", "SELECT a FROM t", "", False),
    ("pred only a semicolon", "SELECT a FROM t", " ; SELECT a FROM t", False),
    ("pred write refused", "SELECT COUNT(*) FROM t", "DELETE FROM t", False),
    ("pred ATTACH refused", "SELECT 1", "ATTACH DATABASE ':memory:' AS x", False),
    ("pred PRAGMA refused", "SELECT 0", "PRAGMA user_version = 7", False),
    (
        "recursive CTE allowed",
        "SELECT 3",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3) SELECT MAX(x) FROM c",
        True,
    ),
]


@pytest.mark.parametrize("rule,gold,pred,expected", CASES, ids=[c[0] for c in CASES])
def test_execution_match(db, rule, gold, pred, expected):
    assert execution_match(db, gold, pred) is expected


@pytest.mark.parametrize(
    "pred",
    [
        "DELETE FROM t",
        "DROP TABLE t",
        "INSERT INTO t VALUES (9, 'w', 9.0)",
        "UPDATE t SET a = 0",
        "SELECT 1; DROP TABLE t",
        "CREATE TABLE v (x)",
        "BEGIN; DELETE FROM t; COMMIT",
    ],
)
def test_predictions_never_change_the_database(db, pred):
    execution_match(db, "SELECT a FROM t", pred)
    assert _count(db) == 4
    conn = sqlite3.connect(db)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert tables == {"t", "u"}


def test_first_statement_runs_and_the_table_survives(db):
    assert execution_match(db, "SELECT 1", "SELECT 1; DROP TABLE t") is True
    assert _count(db) == 4


def test_timeout_is_no_match_and_quick(db):
    forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c"
    start = time.monotonic()
    assert execution_match(db, "SELECT 1", forever, timeout_s=0.3) is False
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("gold", ["SELEC a FROM t", "SELECT a FROM nope", "", "DELETE FROM t"])
def test_failing_gold_raises_naming_db_and_query(db, gold):
    with pytest.raises(EvaluationError) as info:
        execution_match(db, gold, "SELECT a FROM t")
    assert str(db) in str(info.value) and repr(gold) in str(info.value)


def test_missing_database_raises(tmp_path):
    with pytest.raises(EvaluationError, match="missing.sqlite"):
        execution_match(tmp_path / "missing.sqlite", "SELECT 1", "SELECT 1")
    assert not (tmp_path / "missing.sqlite").exists()


@pytest.mark.parametrize(
    "gold,pred,ordered,expected",
    [
        ([(1, "a"), (2, "b")], [("b", 2), ("a", 1)], False, True),
        ([(1, "a"), (2, "b")], [("a", 2), ("b", 1)], False, False),  # columns match as sets, rows do not
        ([(1, 1), (1, 2)], [(2, 1), (1, 1)], False, True),  # ambiguous columns: a later permutation works
        ([(1, "a"), (2, "b")], [("b", 2), ("a", 1)], True, False),
        ([(1,)], [(1.0,)], True, True),
        ([], [], True, True),
        ([(1,)], [], False, False),
        ([tuple(range(9))], [tuple(range(9))], False, True),
        ([tuple(range(9))], [tuple(reversed(range(9)))], False, False),  # > 8 columns: written order only
        ([tuple(range(8))], [tuple(reversed(range(8)))], False, True),
    ],
)
def test_results_match(gold, pred, ordered, expected):
    assert results_match(gold, pred, ordered) is expected


@pytest.mark.parametrize(
    "sql,first,ordered",
    [
        ("SELECT 1; DROP TABLE t", "SELECT 1", False),
        ("SELECT ';' ; x", "SELECT ';'", False),
        ('SELECT "a;b" FROM t', 'SELECT "a;b" FROM t', False),
        ("SELECT 1 -- ; comment\n; x", "SELECT 1 -- ; comment", False),
        ("SELECT 1 /* ; */ ORDER BY 1", "SELECT 1 /* ; */ ORDER BY 1", True),
        ("SELECT a FROM t order\n by a", "SELECT a FROM t order\n by a", True),
        (
            "SELECT a FROM (SELECT a FROM t ORDER BY a LIMIT 2)",
            "SELECT a FROM (SELECT a FROM t ORDER BY a LIMIT 2)",
            False,
        ),
        ("SELECT ROW_NUMBER() OVER (ORDER BY a) FROM t", "SELECT ROW_NUMBER() OVER (ORDER BY a) FROM t", False),
        ("SELECT 1; SELECT 1 ORDER BY 1", "SELECT 1", False),
        ("SELECT 'it''s;' ORDER BY 1", "SELECT 'it''s;' ORDER BY 1", True),
    ],
)
def test_first_statement_and_order_by(sql, first, ordered):
    assert first_statement(sql) == first
    assert has_top_level_order_by(sql) is ordered


def test_split_statements():
    context = "CREATE TABLE a (x INTEGER); CREATE TABLE b (y VARCHAR, z 'odd;name');  ;"
    assert split_statements(context) == ["CREATE TABLE a (x INTEGER)", "CREATE TABLE b (y VARCHAR, z 'odd;name')"]


@pytest.mark.parametrize(
    "sql,expected",
    [
        ("SELECT COUNT(*) FROM head WHERE age > 56", [56]),
        ("SELECT a FROM t WHERE name = 'O''Brien' AND x = 2.5", ["O'Brien", 2.5]),
        ('SELECT a FROM t WHERE hometown = "Texas" AND y = 1 OR y = 1', ["Texas", 1]),
        ("SELECT col2 FROM t2 WHERE n LIKE '%ab%'", ["%ab%"]),
        ("SELECT a FROM t -- 'not this' 3\n", []),
    ],
)
def test_literals_from(sql, expected):
    assert literals_from(sql) == expected


HEAD = "CREATE TABLE head (age INTEGER, name VARCHAR)"
HEAD_GOLD = "SELECT COUNT(*) FROM head WHERE age > 56"


@pytest.mark.parametrize(
    "pred,expected",
    [
        ("SELECT COUNT(*) FROM head WHERE age > 56", True),
        ("SELECT COUNT(*) FROM head WHERE 56 < age", True),
        ("select count(name) from head where age >= 57", True),
        ("SELECT COUNT(*) FROM head WHERE NOT age <= 56", True),
        ("SELECT COUNT(*) FROM head WHERE age >= 56", False),
        ("SELECT COUNT(*) FROM head WHERE age < 56", False),
        ("SELECT COUNT(*) FROM head", False),
        ("SELECT COUNT(*) FROM heads WHERE age > 56", False),
        ("DELETE FROM head", False),
    ],
)
def test_schema_only_mode(tmp_path, pred, expected):
    assert execution_match_schema(HEAD, HEAD_GOLD, pred, seed=0, workdir=tmp_path) is expected


def test_schema_databases_are_seeded_cached_and_hit_the_literals(tmp_path):
    lits = literals_from("SELECT name FROM head WHERE name = 'Ann Lee' AND age > 56")
    paths = schema_databases(HEAD, seed=1, n=3, rows=20, workdir=tmp_path, literals=lits)
    assert len(paths) == 3 and all(p.exists() for p in paths)
    assert schema_databases(HEAD, seed=1, n=3, rows=20, workdir=tmp_path, literals=lits) == paths
    assert schema_databases(HEAD, seed=2, n=3, rows=20, workdir=tmp_path, literals=lits) != paths
    contents = []
    for path in paths:
        conn = sqlite3.connect(path)
        rows = conn.execute("SELECT age, name FROM head").fetchall()
        conn.close()
        assert len(rows) == 20
        assert all(isinstance(a, int) and isinstance(n, str) for a, n in rows)
        assert len({a for a, _ in rows}) < 20  # repeats, so GROUP BY groups
        contents.append(rows)
    assert any(name == "Ann Lee" for rows in contents for _, name in rows)
    assert any(age > 56 for rows in contents for age, _ in rows)
    assert contents[0] != contents[1]


def test_schema_context_with_several_tables(tmp_path):
    context = "CREATE TABLE a (id INTEGER, n VARCHAR); CREATE TABLE b (id INTEGER, score REAL)"
    gold = "SELECT a.n, SUM(b.score) FROM a JOIN b ON a.id = b.id GROUP BY a.n"
    assert execution_match_schema(context, gold, gold, workdir=tmp_path)
    swapped = "SELECT SUM(b.score), a.n FROM b JOIN a ON b.id = a.id GROUP BY a.n"
    assert execution_match_schema(context, gold, swapped, workdir=tmp_path)
    assert not execution_match_schema(
        context, gold, "SELECT a.n, SUM(b.score) FROM a JOIN b GROUP BY a.n", workdir=tmp_path
    )


def test_schema_gold_failure_raises(tmp_path):
    with pytest.raises(EvaluationError, match="gold query failed"):
        execution_match_schema(HEAD, "SELECT height FROM head", "SELECT 1", workdir=tmp_path)
    with pytest.raises(EvaluationError, match="schema context"):
        execution_match_schema("CREATE TABL head (age INTEGER)", "SELECT 1", "SELECT 1", workdir=tmp_path)


def test_schema_mode_without_workdir():
    assert execution_match_schema(HEAD, HEAD_GOLD, "SELECT COUNT(*) FROM head WHERE age > 56.0")


def test_shipped_fixture_answers_match_themselves():
    rows = [json.loads(line) for line in (SQL_DIR / "sql.jsonl").read_text().splitlines() if line.strip()]
    assert rows
    start = time.monotonic()
    for row in rows:
        db = SQL_DIR / "databases" / f"{row['db_id']}.sqlite"
        assert execution_match(db, row["answer"], row["answer"]), row
    assert time.monotonic() - start < 10
