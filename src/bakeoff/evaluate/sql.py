"""SQL execution accuracy, with the semantics of the Spider test-suite evaluation (stdlib ``sqlite3`` only).

Two queries match on a database when their results are equal under these rules:

* **First statement only.** The text is cut at the first ``;`` outside string literals, quoted identifiers and
  comments; the rest is never executed (``SELECT 1; DROP TABLE t`` runs ``SELECT 1``). An empty first
  statement is a failed query.
* **Rows are a multiset** (``collections.Counter`` of row tuples), unless the gold query has a *top-level*
  ``ORDER BY`` (case-insensitive, outside literals, comments and parentheses, so ``ORDER BY`` inside a
  subquery or a window ``OVER (...)`` does not count): then the row sequence must be equal.
* **Columns are matched by a permutation**, as Spider does: a permutation of the prediction's columns is tried
  only if it pairs columns whose value multisets are equal, and the first that makes the rows equal wins.
  Results wider than ``MAX_PERMUTED_COLUMNS`` columns are compared in the order written. Column names are
  ignored. Two empty results match whatever their widths (as in Spider).
* **Values:** an integral float equals the integer (``1 == 1.0``); other floats compare exactly; strings stay
  strings (``'1' != 1``); ``NULL`` equals ``NULL``.
* **No normalisation of the query**: ``DISTINCT`` is kept as written, so ``SELECT DISTINCT a`` and ``SELECT a``
  differ when ``a`` repeats.

Queries run on a read-only connection (``mode=ro``) with an authorizer that allows only reads, so a
prediction can never change the database, and with a time limit enforced by a progress handler. A
prediction that fails to prepare or execute, is refused, times out, or returns more than ``MAX_ROWS`` rows is
no match. A gold query that fails raises :class:`~bakeoff.errors.EvaluationError`.

For b-mc2/sql-create-context, whose context holds ``CREATE TABLE`` statements and no rows,
:func:`execution_match_schema` builds a few seeded synthetic databases (:func:`schema_databases`) and requires
a match on every one of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bakeoff.errors import EvaluationError

MAX_PERMUTED_COLUMNS = 8
MAX_ROWS = 1_000_000
_PROGRESS_OPCODES = 1000

# Everything a plain SELECT (with CTEs and functions) needs; any other action (writes, DDL, ATTACH, PRAGMA,
# transactions) is denied when the statement is prepared.
_ALLOWED_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
)

_NUMBER = re.compile(r"(?<![\w.])(\d+\.\d*|\.\d+|\d+)(?![\w.])")
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)

Row = tuple[Any, ...]


# ---------------------------------------------------------------------------------------------------------------
# Query text


def _spans(sql: str) -> Iterator[tuple[int, int, str]]:
    """Yield ``(start, end, opener)`` for each string literal, quoted identifier and comment in ``sql``.

    Openers: ``'`` and ``"`` and ````` (a doubled closer escapes it), ``[`` (closed by ``]``), ``--`` (to end of
    line) and ``/*`` (to ``*/``). An unterminated span runs to the end of the text.
    """
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`[":
            close = "]" if c == "[" else c
            j = i + 1
            while j < n:
                if sql[j] == close:
                    if close != "]" and j + 1 < n and sql[j + 1] == close:
                        j += 2
                        continue
                    break
                j += 1
            end = min(j + 1, n)
            yield i, end, c
            i = end
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            end = n if j < 0 else j
            yield i, end, "--"
            i = end
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            end = n if j < 0 else j + 2
            yield i, end, "/*"
            i = end
        else:
            i += 1


def _mask(sql: str) -> str:
    """``sql`` with every literal, quoted identifier and comment blanked to spaces (same length)."""
    chars = list(sql)
    for start, end, _ in _spans(sql):
        chars[start:end] = " " * (end - start)
    return "".join(chars)


def split_statements(sql: str) -> list[str]:
    """The statements of ``sql``, split on ``;`` outside literals and comments, stripped, empty ones dropped."""
    masked = _mask(sql)
    out, start = [], 0
    for i, c in enumerate(masked):
        if c == ";":
            out.append(sql[start:i].strip())
            start = i + 1
    out.append(sql[start:].strip())
    return [s for s in out if s]


def first_statement(sql: str) -> str:
    """The text before the first ``;`` outside literals and comments, stripped (``""`` when it is empty)."""
    cut = _mask(sql).find(";")
    return (sql if cut < 0 else sql[:cut]).strip()


def has_top_level_order_by(sql: str) -> bool:
    """True when the first statement has ``ORDER BY`` outside parentheses, literals and comments."""
    masked = _mask(first_statement(sql))
    for m in _ORDER_BY.finditer(masked):
        before = masked[: m.start()]
        if before.count("(") - before.count(")") == 0:
            return True
    return False


def literals_from(sql: str) -> list[str | int | float]:
    """Quoted strings (``'...'`` and ``"..."``, doubled quotes unescaped) and unsigned numbers in ``sql``.

    In order of first appearance, without repeats. Double-quoted text is included because
    sql-create-context answers often use it for string literals (SQLite accepts that).
    """
    found: dict[tuple[str, Any], str | int | float] = {}
    for start, end, opener in _spans(sql):
        if opener in ("'", '"') and end - start >= 2 and sql[end - 1] == opener:
            text = sql[start + 1 : end - 1].replace(opener * 2, opener)
            found.setdefault(("str", text), text)
    for m in _NUMBER.finditer(_mask(sql)):
        token = m.group(1)
        value: int | float = float(token) if "." in token else int(token)
        found.setdefault((type(value).__name__, value), value)
    return list(found.values())


# ---------------------------------------------------------------------------------------------------------------
# Result comparison


def _normalise_value(value: Any) -> Any:
    """An integral float becomes the int it equals (``1.0 -> 1``); every other value is kept as it is."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _normalise_rows(rows: Iterable[Sequence[Any]]) -> list[Row]:
    return [tuple(_normalise_value(v) for v in row) for row in rows]


def _assignments(options: list[list[int]]) -> Iterator[tuple[int, ...]]:
    """Injective choices of one option per position (backtracking)."""
    chosen: list[int] = []
    used: set[int] = set()

    def walk(i: int) -> Iterator[tuple[int, ...]]:
        if i == len(options):
            yield tuple(chosen)
            return
        for j in options[i]:
            if j not in used:
                used.add(j)
                chosen.append(j)
                yield from walk(i + 1)
                chosen.pop()
                used.discard(j)

    yield from walk(0)


def results_match(gold_rows: Sequence[Sequence[Any]], pred_rows: Sequence[Sequence[Any]], ordered: bool) -> bool:
    """Spider's result equality: multiset (or sequence when ``ordered``) of rows, columns matched by permutation.

    Values are normalised first (``1.0 -> 1``). Only permutations pairing columns with equal value multisets
    are tried; beyond ``MAX_PERMUTED_COLUMNS`` columns only the written order is. Two empty results match.
    """
    gold, pred = _normalise_rows(gold_rows), _normalise_rows(pred_rows)
    if not gold and not pred:
        return True
    if len(gold) != len(pred):
        return False
    width = len(gold[0])
    if any(len(r) != width for r in gold) or any(len(r) != width for r in pred):
        return False
    gold_columns = [Counter(r[i] for r in gold) for i in range(width)]
    pred_columns = [Counter(r[j] for r in pred) for j in range(width)]
    if width > MAX_PERMUTED_COLUMNS:
        options = [[i] if pred_columns[i] == gold_columns[i] else [] for i in range(width)]
    else:
        options = [[j for j in range(width) if pred_columns[j] == gold_columns[i]] for i in range(width)]
    target: list[Row] | Counter[Row] = gold if ordered else Counter(gold)
    for perm in _assignments(options):
        permuted = [tuple(row[j] for j in perm) for row in pred]
        if (permuted if ordered else Counter(permuted)) == target:
            return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# Execution


def _authorize(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


class _QueryFailed(Exception):
    """A query could not produce a result (the cause is chained)."""


def _execute(db_path: str | os.PathLike[str], sql: str, timeout_s: float) -> list[Row]:
    """Rows of the first statement of ``sql`` on a read-only, write-refusing connection; raises _QueryFailed."""
    statement = first_statement(sql)
    if not statement:
        raise _QueryFailed("empty query")
    uri = Path(db_path).resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise _QueryFailed(f"cannot open database: {exc}") from exc
    deadline = time.monotonic() + timeout_s
    try:
        conn.text_factory = lambda b: b.decode("utf-8", "replace")
        conn.set_authorizer(_authorize)
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_OPCODES)
        cursor = conn.execute(statement)
        rows: list[Row] = []
        while batch := cursor.fetchmany(10_000):
            rows.extend(batch)
            if len(rows) > MAX_ROWS:
                raise _QueryFailed(f"more than {MAX_ROWS} rows")
        return rows
    except sqlite3.OperationalError as exc:
        if time.monotonic() > deadline:
            raise _QueryFailed(f"timed out after {timeout_s}s") from exc
        raise _QueryFailed(str(exc)) from exc
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as exc:
        raise _QueryFailed(str(exc)) from exc
    finally:
        conn.close()


def execution_match(db_path: str | os.PathLike[str], gold: str, pred: str, timeout_s: float = 5.0) -> bool:
    """True when ``pred`` returns the same result as ``gold`` on the database (rules in the module docstring).

    A prediction that fails, is refused or times out is no match; a gold query that fails raises EvaluationError.
    """
    try:
        gold_rows = _execute(db_path, gold, timeout_s)
    except _QueryFailed as exc:
        raise EvaluationError(f"gold query failed on {db_path}: {gold!r}: {exc}") from exc
    try:
        pred_rows = _execute(db_path, pred, timeout_s)
    except _QueryFailed:
        return False
    return results_match(gold_rows, pred_rows, ordered=has_top_level_order_by(gold))


# ---------------------------------------------------------------------------------------------------------------
# Schema-only mode (CREATE TABLE context, no rows)

_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


def _kind(declared: str) -> str:
    """Column kind from the declared type, by SQLite's affinity rules; untyped and BLOB columns get text."""
    t = declared.upper()
    if "INT" in t:
        return "integer"
    if any(s in t for s in ("CHAR", "CLOB", "TEXT")) or t in ("", "BLOB"):
        return "text"
    if any(s in t for s in ("REAL", "FLOA", "DOUB")):
        return "real"
    return "integer"  # NUMERIC, DECIMAL, BOOLEAN, DATE...


def _numbers(literals: Sequence[str | int | float]) -> list[float]:
    out = []
    for v in literals:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            continue
    return out


def _candidates(kind: str, literals: Sequence[str | int | float]) -> tuple[list[Any], list[Any]]:
    """(values taken from the gold literals, filler values) for a column of ``kind``."""
    numbers = _numbers(literals)
    if kind == "integer":
        seeded = sorted({int(x) + d for x in numbers for d in (-1, 0, 1)})
        return seeded, list(range(1, 11))
    if kind == "real":
        seeded = sorted({x + d for x in numbers for d in (-0.5, 0.0, 0.5)})
        return seeded, [x / 2 for x in range(1, 21)]
    seeded_text: dict[str, None] = {}
    for v in literals:
        text = str(v)
        seeded_text[text] = None
        if "%" in text or "_" in text:  # a LIKE pattern: also the text it is built around
            stripped = text.replace("%", "").strip("_")
            if stripped:
                seeded_text[stripped] = None
    return list(seeded_text), list(_WORDS)


def _column(rng: random.Random, kind: str, rows: int, literals: Sequence[str | int | float]) -> list[Any]:
    """``rows`` values drawn with repeats from a small pool: up to 3 gold-literal values plus filler."""
    seeded, filler = _candidates(kind, literals)
    size = rng.randint(3, 6)
    pool = rng.sample(seeded, min(3, len(seeded)))
    rest = [v for v in filler if v not in pool]
    pool += rng.sample(rest, min(max(size - len(pool), 1), len(rest)))
    return [rng.choice(pool) for _ in range(rows)]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _build(path: Path, context: str, rng: random.Random, rows: int, literals: Sequence[str | int | float]) -> None:
    conn = sqlite3.connect(path)
    try:
        for statement in split_statements(context):
            try:
                conn.execute(statement)
            except (sqlite3.Error, sqlite3.Warning) as exc:
                raise EvaluationError(f"schema context statement failed: {statement!r}: {exc}") from exc
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        ]
        if not tables:
            raise EvaluationError(f"schema context creates no table: {context!r}")
        for table in tables:
            columns = conn.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
            values = [_column(rng, _kind(col[2] or ""), rows, literals) for col in columns]
            names = ", ".join(_quote(col[1]) for col in columns)
            marks = ", ".join("?" for _ in columns)
            # OR IGNORE: a PRIMARY KEY / UNIQUE column simply keeps fewer rows.
            insert = f"INSERT OR IGNORE INTO {_quote(table)} ({names}) VALUES ({marks})"
            conn.executemany(insert, list(zip(*values, strict=True)))
        conn.commit()
    finally:
        conn.close()


def schema_databases(
    context: str,
    seed: int,
    n: int = 3,
    rows: int = 20,
    *,
    workdir: str | os.PathLike[str],
    literals: Sequence[str | int | float] | None = None,
) -> list[Path]:
    """Build (or reuse) ``n`` seeded SQLite databases from the ``CREATE TABLE`` statements in ``context``.

    Each table gets ``rows`` rows. Every column draws with repeats from a small pool (3 to 6 values, so GROUP BY
    and WHERE hit): up to 3 values from ``literals`` (numbers and their neighbours +-1 for INTEGER/NUMERIC
    columns, +-0.5 for REAL; strings, numbers as text and LIKE patterns without ``%`` for text columns) plus
    filler (1..10, 0.5..10.0, or a small word list). Database ``i`` is seeded by ``(seed, i)``. The files live
    in ``workdir/schema-<hash>/``, keyed by a hash of (context, seed, n, rows, literals), and are reused.
    """
    lits = list(literals or [])
    key_data = [context, seed, n, rows, [[type(v).__name__, v] for v in lits]]
    key = hashlib.sha256(json.dumps(key_data).encode()).hexdigest()[:16]
    folder = Path(workdir) / f"schema-{key}"
    paths = [folder / f"db{i}.sqlite" for i in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        if path.exists():
            continue
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            _build(tmp, context, random.Random(f"{seed}:{i}"), rows, lits)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return paths


def execution_match_schema(
    context: str,
    gold: str,
    pred: str,
    seed: int = 0,
    n: int = 3,
    timeout_s: float = 5.0,
    workdir: str | os.PathLike[str] | None = None,
    rows: int = 20,
) -> bool:
    """:func:`execution_match` on each of ``n`` synthetic databases built from ``context``; True only if all match.

    The databases are seeded with the literals of ``gold`` (:func:`literals_from`) so its WHERE clauses can hit.
    Built in a temporary folder unless ``workdir`` is given (then cached there). A gold query that fails on a
    synthetic database raises EvaluationError. Caveat: a gold query whose result is empty on every database is
    matched by any prediction that is empty too.
    """
    literals = literals_from(gold)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="bakeoff-sql-") as tmp:
            dbs = schema_databases(context, seed, n, rows, workdir=tmp, literals=literals)
            return all(execution_match(db, gold, pred, timeout_s) for db in dbs)
    dbs = schema_databases(context, seed, n, rows, workdir=workdir, literals=literals)
    return all(execution_match(db, gold, pred, timeout_s) for db in dbs)
