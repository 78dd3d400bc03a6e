"""Code fences, SQL exact match, and the SQL sandbox's limits (issue 16, items 5 and 6)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bakeoff.errors import EvaluationError
from bakeoff.evaluate import sql
from bakeoff.evaluate.metrics import NORMALISATION, exact_match, strip_code_fence
from bakeoff.evaluate.sql import (
    exact_match_sql,
    execution_match,
    execution_match_schema,
    normalise_sql,
    schema_databases,
)
from bakeoff.evaluate.viggo import mr_match, slot_scores

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 2.0
SLACK_S = 3.0  # CI machines are noisy: "about the limit" is asserted as under limit + 3 s
MAX_RSS_MB = 200


# --------------------------------------------------------------------------------------------------------------
# Code fences


@pytest.mark.parametrize(
    "text,expected",
    [
        ("```sql\nSELECT 1\n```", "SELECT 1"),
        ("  \n```SQL\nSELECT a\nFROM t;\n```\n  ", "SELECT a\nFROM t;"),
        ("```\nSELECT 1\n```", "SELECT 1"),
        ("~~~sqlite\nSELECT 1\n~~~", "SELECT 1"),
        ("````sql\nSELECT '```'\n````", "SELECT '```'"),
        ("```sql\nSELECT 1```", "SELECT 1"),  # closing fence right after the last line
        ("```\ninform(name[X])\n```", "inform(name[X])"),
        ("SELECT 1", "SELECT 1"),  # no fence: unchanged
        ("Here it is:\n```sql\nSELECT 1\n```", "Here it is:\n```sql\nSELECT 1\n```"),  # prose around: unchanged
        ("```sql\nSELECT 1\n```\nDone.", "```sql\nSELECT 1\n```\nDone."),
        ("```sql\nSELECT 1\n```\n```sql\nSELECT 2\n```", "```sql\nSELECT 1\n```\n```sql\nSELECT 2\n```"),  # two
        ("```sql\nSELECT 1", "```sql\nSELECT 1"),  # unclosed
        ("```SELECT 1```", "```SELECT 1```"),  # one line
        ("`SELECT 1`", "`SELECT 1`"),
    ],
)
def test_strip_code_fence(text, expected):
    assert strip_code_fence(text) == expected


def test_normalisation_sentences_name_each_metric():
    assert {"exact_match", "exact_match_sql", "sql_execution", "mr_match", "strip_code_fence"} <= set(NORMALISATION)
    assert all(isinstance(v, str) and v.endswith(".") and "\n" not in v for v in NORMALISATION.values())


# --------------------------------------------------------------------------------------------------------------
# Exact match for SQL


@pytest.mark.parametrize(
    "reference,prediction,expected",
    [
        ("SELECT name FROM t WHERE name = 'Bob'", "select NAME from T where name = 'Bob'", 1.0),
        ("SELECT name FROM t WHERE name = 'Bob'", "SELECT name FROM t WHERE name = 'bob'", 0.0),  # literal case
        ('SELECT a FROM t WHERE b = "Texas"', 'select a from t where b = "texas"', 0.0),
        ("SELECT a FROM t WHERE b = 'a  b'", "SELECT a FROM t WHERE b = 'a b'", 0.0),  # spaces in a literal kept
        ("SELECT a  FROM\n t", "SELECT a FROM t", 1.0),
        ("SELECT a FROM t", "SELECT a FROM t;", 1.0),
        ("SELECT a FROM t WHERE b = 'x;'", "SELECT a FROM t WHERE b = 'x;' ; ", 1.0),
        ("SELECT a FROM t", "```sql\nSELECT a\nFROM t;\n```", 1.0),
        ("SELECT a FROM t", "SELECT b FROM t", 0.0),
        ("SELECT `Col` FROM [T]", "SELECT `col` FROM [t]", 1.0),  # quoted identifiers ignore case
    ],
)
def test_exact_match_sql(reference, prediction, expected):
    assert exact_match_sql(reference, prediction) == expected


def test_exact_match_sql_raw_score_keeps_the_fence():
    assert exact_match_sql("SELECT 1", "```sql\nSELECT 1\n```", strip_fences=False) == 0.0
    assert normalise_sql("```\nSELECT  'A' ;\n```", strip_fences=False).startswith("```")


def test_plain_exact_match_is_unchanged():
    assert exact_match("WHERE name = 'Bob'", "where name = 'bob'") == 1.0  # folds everything, as before
    assert exact_match("Paris", "```\nParis\n```") == 0.0  # and strips no fence


# --------------------------------------------------------------------------------------------------------------
# Fences in execution and MR scores


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "t.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE t (a INTEGER, b TEXT); INSERT INTO t VALUES (1, 'x'), (2, 'y'), (7, 'y');")
    conn.commit()
    conn.close()
    return path


FENCED = "```sql\nSELECT a FROM t WHERE b = 'y';\n```"


def test_execution_match_strips_a_fence_and_keeps_the_raw_score(db):
    gold = "SELECT a FROM t WHERE b = 'y'"
    assert execution_match(db, gold, FENCED) is True
    assert execution_match(db, gold, FENCED, strip_fences=False) is False


def test_execution_match_schema_strips_a_fence(tmp_path):
    context, gold = "CREATE TABLE t (a INTEGER, b TEXT)", "SELECT a FROM t WHERE b = 'y'"
    assert execution_match_schema(context, gold, FENCED, workdir=tmp_path) is True
    assert execution_match_schema(context, gold, FENCED, workdir=tmp_path, strip_fences=False) is False


def test_mr_scores_strip_a_fence_and_keep_the_raw_score():
    gold = "inform(name[Portal 2], rating[excellent])"
    fenced = "```\ninform(rating[excellent], name[Portal 2])\n```"
    assert mr_match(gold, fenced) is True
    assert slot_scores(gold, fenced) == (1.0, 1.0, 1.0)
    assert mr_match(gold, fenced, strip_fences=False) is False
    assert slot_scores(gold, fenced, strip_fences=False) == (0.0, 0.0, 0.0)


# --------------------------------------------------------------------------------------------------------------
# The sandbox: limits on every connection


def test_printf_still_works_within_the_limits(db):
    gold = "SELECT printf('%05d-%s', a, b) FROM t"
    assert execution_match(db, gold, "SELECT format('%05d-%s', a, b) FROM t") is True
    assert execution_match(db, gold, "SELECT printf('%.*c', 2147483647, 'x')") is False


@pytest.mark.parametrize(
    "gold",
    [
        "SELECT randomblob(999999999)",  # over the value limit
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT randomblob(200000) FROM c",  # result
        "SELECT printf('%.*c', 900000000, 'x')",
    ],
)
def test_a_gold_query_past_a_limit_is_a_counted_failure(db, gold):
    with pytest.raises(EvaluationError, match="gold query failed"):
        execution_match(db, gold, "SELECT 1", timeout_s=LIMIT_S)


HUGE = [
    "SELECT printf('%.*c', 900000000, 'x')",
    "SELECT printf('%.*c', 2147483647, 'x')",
    "SELECT randomblob(999999999)",
    "SELECT zeroblob(999999999)",
    "SELECT length(replace(hex(zeroblob(100000000)), '0', 'ab'))",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT randomblob(200000) FROM c",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT DISTINCT randomblob(200000) FROM c",
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT group_concat(hex(randomblob(1000))) FROM c",
    "SELECT instr(hex(zeroblob(131000)), hex(zeroblob(65000)) || '1')",
]

# Runs in a child process, so that ru_maxrss (a high-water mark) measures these queries alone.
_CHILD = textwrap.dedent(
    """
    import json, resource, sqlite3, sys, time
    from pathlib import Path
    from bakeoff.evaluate.sql import execution_match, execution_match_schema
    mode, root, limit, preds = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
    db = root / "db.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE t (a INTEGER, b TEXT); INSERT INTO t VALUES (1, 'x');")
    conn.close()
    execution_match(db, "SELECT 1", "SELECT 1")  # warm up: imports and first allocations
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = []
    for pred in preds:
        start = time.monotonic()
        if mode == "database":
            ok = execution_match(db, "SELECT a FROM t", pred, timeout_s=limit)
        else:
            ok = execution_match_schema("CREATE TABLE t (a INTEGER, b TEXT)", "SELECT a FROM t", pred,
                                        timeout_s=limit, workdir=root / "work")
        out.append([pred, ok, time.monotonic() - start])
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    heap = sqlite3.connect(":memory:").execute("PRAGMA hard_heap_limit").fetchone()[0]
    print(json.dumps({"cases": out, "rss_mb": grown, "heap_limit": heap}))
    """
)


def _child(mode: str, root: Path, preds: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(root), str(LIMIT_S), json.dumps(preds)],
        capture_output=True, text=True, timeout=len(preds) * (LIMIT_S + SLACK_S) + 60, env=env, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["database", "schema"])
def test_huge_value_predictions_are_quick_small_and_wrong(tmp_path, mode):
    result = _child(mode, tmp_path, HUGE)
    for pred, ok, wall in result["cases"]:
        assert ok is False, pred
        assert wall < LIMIT_S + SLACK_S, (pred, wall)
    assert result["rss_mb"] < MAX_RSS_MB, result
    assert result["heap_limit"] == sql.MEMORY_LIMIT_BYTES


# --------------------------------------------------------------------------------------------------------------
# The sandbox: schema contexts


def _hostile_contexts(root: Path) -> list[tuple[str, str]]:
    tens = "INSERT INTO t VALUES (1), (2), (3), (4), (5), (6), (7), (8), (9), (10)"
    return [
        ("attach", f"CREATE TABLE t (a INTEGER); ATTACH DATABASE '{root}/elsewhere.db' AS x; CREATE TABLE x.t (a)"),
        ("vacuum into", f"CREATE TABLE t (a INTEGER); VACUUM INTO '{root}/copy.db'"),
        ("vacuum", "CREATE TABLE t (a INTEGER); VACUUM"),
        ("recursive CREATE AS", "CREATE TABLE t (a INTEGER); CREATE TABLE big AS WITH RECURSIVE c(x) AS "
                                "(SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x, randomblob(10000) AS b FROM c"),
        ("disk filler", f"CREATE TABLE t (a INTEGER); {tens}; "
                        "CREATE TABLE big AS SELECT randomblob(200000) AS b FROM t a, t b, t c, t d"),
        ("slow", f"CREATE TABLE t (a INTEGER); {tens}; "
                 "CREATE TABLE big AS SELECT count(*) AS n FROM t a, t b, t c, t d, t e, t f, t g, t h, t i, t j"),
        ("pragma max_page_count", "PRAGMA max_page_count = 1000000000; CREATE TABLE t (a INTEGER)"),
        ("pragma journal_mode", "CREATE TABLE t (a INTEGER); PRAGMA journal_mode = WAL"),
        ("load_extension", "CREATE TABLE t (a INTEGER); SELECT load_extension('/nonexistent/ext')"),
        ("load_extension in insert", "CREATE TABLE t (a); INSERT INTO t VALUES (load_extension('/nonexistent/x'))"),
        ("huge check", "CREATE TABLE t (a INTEGER, b TEXT CHECK (length(printf('%.*c', 900000000, 'x')) > 0))"),
        ("huge generated column", "CREATE TABLE t (a INTEGER, b BLOB AS (randomblob(999999999)) STORED)"),
        ("trigger", "CREATE TABLE t (a INTEGER); CREATE TRIGGER g AFTER INSERT ON t BEGIN SELECT 1; END"),
        ("view", "CREATE TABLE t (a INTEGER); CREATE VIEW v AS SELECT a FROM t"),
        ("index", "CREATE TABLE t (a INTEGER); CREATE INDEX i ON t (a)"),
        ("temp table", "CREATE TEMP TABLE t (a INTEGER)"),
        ("virtual table", "CREATE VIRTUAL TABLE t USING fts5(a)"),
        ("delete", "CREATE TABLE t (a INTEGER); DELETE FROM t"),
        ("begin", "BEGIN; CREATE TABLE t (a INTEGER); COMMIT"),
    ]


@pytest.mark.parametrize("name", [n for n, _ in _hostile_contexts(Path("/"))])
def test_hostile_context_is_a_quick_counted_failure_that_writes_only_in_the_work_folder(tmp_path, name):
    context = dict(_hostile_contexts(tmp_path))[name]
    work = tmp_path / "work"
    start = time.monotonic()
    with pytest.raises(EvaluationError, match="schema context"):
        execution_match_schema(context, "SELECT 1", "SELECT 1", timeout_s=LIMIT_S, workdir=work)
    assert time.monotonic() - start < LIMIT_S + SLACK_S
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # nothing beside the work folder
    leftovers = [p for p in work.rglob("*") if p.is_file()]
    assert leftovers == []  # and no half-built database in it


def test_disk_filler_stops_at_the_size_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(sql, "MAX_SCHEMA_DB_BYTES", 1024 * 1024)
    context = "CREATE TABLE t (a INTEGER); INSERT INTO t VALUES (1), (2), (3), (4), (5), (6), (7), (8), (9), (10); " \
              "CREATE TABLE big AS SELECT randomblob(1000) AS b FROM t a, t b, t c, t d"  # 10 MB if let through
    with pytest.raises(EvaluationError, match="full"):
        schema_databases(context, seed=0, n=1, workdir=tmp_path)


@pytest.mark.parametrize(
    "context,gold",
    [
        ("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT DEFAULT 'x', age INT CHECK (age > -100))",
         "SELECT COUNT(*) FROM t WHERE age > 3"),
        ('CREATE TABLE "odd name" ("a b" VARCHAR, c REAL, d AS (c * 2))', 'SELECT "a b", d FROM "odd name"'),
        ("CREATE TABLE IF NOT EXISTS t (a INTEGER); INSERT INTO t (a) VALUES (99); REPLACE INTO t (a) VALUES (98)",
         "SELECT a FROM t WHERE a > 90"),
        ("CREATE TABLE a (id INTEGER, n TEXT); CREATE TABLE b AS SELECT id, n FROM a WHERE 0",
         "SELECT COUNT(*) FROM a JOIN b ON a.id = b.id"),
    ],
)
def test_ordinary_contexts_still_build(tmp_path, context, gold):
    assert execution_match_schema(context, gold, gold, timeout_s=LIMIT_S, workdir=tmp_path) is True
