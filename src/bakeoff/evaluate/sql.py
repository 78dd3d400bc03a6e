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

A prediction that is one Markdown code block (```` ```sql ... ``` ````) is scored on the block's content
(:func:`~bakeoff.evaluate.metrics.strip_code_fence`); ``strip_fences=False`` scores the raw text.

**The sandbox.** Queries run on a read-only connection (``mode=ro``) with an authorizer that allows only reads
(and no ``load_extension``), so a prediction can never change the database or touch another file (``ATTACH``
and ``VACUUM INTO``, which attaches, are refused, and no database may be attached at all), and with a time limit
enforced by a progress handler. Every connection also gets these limits: a text or blob value, or a row, of at
most ``MAX_VALUE_BYTES`` (``SQLITE_LIMIT_LENGTH``, so ``randomblob(999999999)`` fails at once instead of
allocating gigabytes), LIKE and GLOB patterns of at most ``MAX_LIKE_PATTERN`` bytes, ``printf``/``format``
refusing a width or precision above ``MAX_VALUE_BYTES`` (SQLite's own ``printf('%.*c', 2147483647, 'x')`` loops
for seconds inside one call, where the progress handler cannot stop it), temporary tables and sorts in memory
(no temporary files), and SQLite's heap capped at ``MEMORY_LIMIT_BYTES`` (``PRAGMA hard_heap_limit``). That
heap cap is process-wide (SQLite has no per-connection one) and can only ever be lowered: once this module has
opened a connection, every SQLite connection of the process shares it. A result is read into Python only up to
``MAX_ROWS`` rows and ``MAX_RESULT_BYTES`` bytes of text and blobs. A prediction that fails to prepare or
execute, is refused, times out, or passes any of these limits is no match. A gold query that fails the same way
raises :class:`~bakeoff.errors.EvaluationError`. The time limit is checked every ``_PROGRESS_OPCODES`` virtual
machine steps, so one step can overrun it: the slowest single calls left are quadratic ones (``instr`` or
``replace`` on two values near ``MAX_VALUE_BYTES``: about 0.3 s each).

For b-mc2/sql-create-context, whose context holds ``CREATE TABLE`` statements and no rows,
:func:`execution_match_schema` builds a few seeded synthetic databases (:func:`schema_databases`) and requires
a match on every one of them. The context is untrusted too: each statement must be a ``CREATE TABLE`` or an
``INSERT`` (anything else, a ``PRAGMA``, ``ATTACH``, ``VACUUM``, a view, trigger or index, is refused), runs
under an authorizer that allows only creating tables in the database being built and inserting into them
(no recursive CTEs, no ``load_extension``), with the same limits as a query, a time limit on building each database
and a size cap (``PRAGMA max_page_count``, set before any untrusted statement, for ``MAX_SCHEMA_DB_BYTES``). A
context that breaks a rule or a limit raises EvaluationError (a counted failure); the files it leaves are only
the database being built and its journal, in the work folder, removed on failure.

:func:`exact_match_sql` is the textual exact match for SQL: fences stripped, case folded outside string
literals, whitespace collapsed, trailing semicolons ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bakeoff.errors import EvaluationError
from bakeoff.evaluate.metrics import strip_code_fence

MAX_PERMUTED_COLUMNS = 8
MAX_ROWS = 1_000_000
# SQLITE_LIMIT_LENGTH: the largest text, blob or row on any connection. Kept at 256 KiB because instr() and
# replace() are quadratic in their arguments' lengths (about 0.3 s for two values this size, 5 s at 1 MiB).
MAX_VALUE_BYTES = 256 * 1024
MAX_LIKE_PATTERN = 1000  # SQLITE_LIMIT_LIKE_PATTERN_LENGTH: LIKE and GLOB are O(text x pattern)
MAX_RESULT_BYTES = 32 * 1024 * 1024  # text and blob bytes one query may hand to Python
MEMORY_LIMIT_BYTES = 64 * 1024 * 1024  # PRAGMA hard_heap_limit (process-wide, see the module docstring)
MAX_SCHEMA_DB_BYTES = 16 * 1024 * 1024  # the size cap of one synthetic database (PRAGMA max_page_count)
_PROGRESS_OPCODES = 1000
_RECURSIVE = getattr(sqlite3, "SQLITE_RECURSIVE", 33)

# Everything a plain SELECT (with CTEs and functions) needs; any other action (writes, DDL, ATTACH, PRAGMA,
# transactions) is denied when the statement is prepared.
_ALLOWED_ACTIONS = frozenset({sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, _RECURSIVE})
_DENIED_FUNCTIONS = frozenset({"load_extension"})

# Building a synthetic database: creating tables in it and inserting rows (CREATE TABLE itself inserts into and
# updates sqlite_master; AUTOINCREMENT writes sqlite_sequence), reading and functions for the values, and the
# transactions the sqlite3 module opens. The only pragma is table_info, which the build itself reads.
_BUILD_ACTIONS = frozenset({sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_INSERT, sqlite3.SQLITE_SELECT,
                            sqlite3.SQLITE_READ, sqlite3.SQLITE_TRANSACTION})
_BUILD_UPDATABLE = frozenset({"sqlite_master", "sqlite_schema", "sqlite_sequence"})
_BUILD_PRAGMAS = frozenset({"table_info"})
_CONTEXT_KEYWORDS = frozenset({"CREATE", "INSERT", "REPLACE"})
_FIRST_WORD = re.compile(r"\s*([A-Za-z]+)")

# One printf directive: flags, width, precision (``*`` takes an argument), length modifier, conversion.
_PRINTF_DIRECTIVE = re.compile(r"%[-+ #!0,]*(\*|\d*)(?:\.(\*|\d*))?(?:ll|l)?(.?)", re.DOTALL)
_LEADING_INT = re.compile(r"\s*([-+]?\d+)")
_printf_helper = threading.local()

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


_SPACE = re.compile(r"\s+")
_TAIL = re.compile(r"[\s;]*\Z")


def normalise_sql(sql: str, strip_fences: bool = True) -> str:
    """``sql`` as :func:`exact_match_sql` compares it.

    A code fence is stripped first (when ``strip_fences``); outside ``'...'`` and ``"..."`` literals the text is
    lower-cased and every run of whitespace becomes one space; literals are kept exactly as written (case and
    spaces); trailing semicolons and whitespace after the last literal or comment are dropped. Quoted identifiers
    in backticks or brackets and comments are folded like the rest (SQLite identifiers ignore case).
    """
    text = (strip_code_fence(sql) if strip_fences else sql).strip()
    out, pos = [], 0
    for start, end, opener in _spans(text):
        out.append(_SPACE.sub(" ", text[pos:start]).lower())
        piece = text[start:end]
        out.append(piece if opener in ("'", '"') else _SPACE.sub(" ", piece).lower())
        pos = end
    tail = _SPACE.sub(" ", text[pos:]).lower()
    tail = tail[: _TAIL.search(tail).start()]
    return ("".join(out) + tail).strip()


def exact_match_sql(reference: str, prediction: str, strip_fences: bool = True) -> float:
    """1.0 when the two queries are the same text under :func:`normalise_sql`, else 0.0.

    ``WHERE name = 'Bob'`` matches ``where NAME = 'Bob';`` and not ``where name = 'bob'``. ``strip_fences=False``
    gives the raw score (a fenced prediction is then compared with its fence).
    """
    same = normalise_sql(reference, strip_fences) == normalise_sql(prediction, strip_fences)
    return 1.0 if same else 0.0


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


def _authorize(action: int, _arg1: str | None, arg2: str | None, *_: Any) -> int:
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY


class _QueryFailed(Exception):
    """A query could not produce a result (the cause is chained)."""


# What a failing SQLite call raises: SQLITE_NOMEM (the heap cap) becomes Python's MemoryError.
_SQL_ERRORS = (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return f"out of memory (SQLite heap capped at {MEMORY_LIMIT_BYTES} bytes)"
    return str(exc) or type(exc).__name__


def _as_count(value: Any) -> int:
    """A printf ``*`` argument as SQLite reads it (an integer, or the leading integer of a text), made positive."""
    if isinstance(value, bool | int):
        return abs(int(value))
    if isinstance(value, float):
        return abs(int(value)) if value == value and abs(value) < 1e300 else 1 << 62
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    m = _LEADING_INT.match(value) if isinstance(value, str) else None
    return abs(int(m.group(1))) if m else 0


def _bounded_printf(*arguments: Any) -> Any:
    """SQLite's own printf(), refusing widths and precisions above ``MAX_VALUE_BYTES``.

    SQLite repeats ``%c`` once per unit of precision even when the result is already too big, so
    ``printf('%.*c', 2147483647, 'x')`` spends seconds in one call, where no progress handler can stop it.
    """
    fmt, args = (arguments[0], arguments[1:]) if arguments else (None, ())
    if isinstance(fmt, str):
        i = 0
        for m in _PRINTF_DIRECTIVE.finditer(fmt):
            width, precision, conversion = m.groups()
            if conversion == "%" and not width and precision is None:
                continue  # "%%"
            if conversion == "n":  # the SQL printf() ignores %n and takes no argument for it
                continue
            for part in (width, precision):
                if part == "*":
                    count = _as_count(args[i]) if i < len(args) else 0
                    i += 1
                else:
                    count = int(part) if part else 0
                if count > MAX_VALUE_BYTES:
                    raise ValueError(f"printf width or precision {count} is over {MAX_VALUE_BYTES}")
            i += 1
    helper = getattr(_printf_helper, "conn", None)
    if helper is None:
        helper = _printf_helper.conn = sqlite3.connect(":memory:", check_same_thread=False)
        helper.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    marks = ", ".join("?" for _ in arguments)
    return helper.execute(f"SELECT printf({marks})", arguments).fetchone()[0]


def _limit(conn: sqlite3.Connection, deadline: float) -> None:
    """The limits every connection gets before any untrusted SQL runs on it (see the module docstring)."""
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LIKE_PATTERN_LENGTH, MAX_LIKE_PATTERN)
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)  # no ATTACH, and so no VACUUM (INTO) either
    for name in ("printf", "format") if sqlite3.sqlite_version_info >= (3, 38) else ("printf",):
        conn.create_function(name, -1, _bounded_printf, deterministic=True)
    if hasattr(conn, "enable_load_extension"):  # absent when Python was built without extension loading
        conn.enable_load_extension(False)
    conn.execute(f"PRAGMA hard_heap_limit = {MEMORY_LIMIT_BYTES}")  # only ever lowers the process-wide cap
    soft = conn.execute("PRAGMA soft_heap_limit").fetchone()
    if soft is not None and not 0 < soft[0] <= MEMORY_LIMIT_BYTES // 2:
        conn.execute(f"PRAGMA soft_heap_limit = {MEMORY_LIMIT_BYTES // 2}")
    conn.execute("PRAGMA temp_store = MEMORY")  # sorts and temporary tables count against the heap cap
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_OPCODES)


def _fetch(cursor: sqlite3.Cursor) -> list[Row]:
    """All rows of ``cursor``, failing past ``MAX_ROWS`` rows or ``MAX_RESULT_BYTES`` bytes of text and blobs."""
    rows: list[Row] = []
    size = 0
    for row in cursor:
        rows.append(row)
        for value in row:
            if isinstance(value, (str, bytes)):
                size += len(value)
        if size > MAX_RESULT_BYTES:
            raise _QueryFailed(f"more than {MAX_RESULT_BYTES} bytes of text and blobs")
        if len(rows) > MAX_ROWS:
            raise _QueryFailed(f"more than {MAX_ROWS} rows")
    return rows


def _execute(db_path: str | os.PathLike[str], sql: str, timeout_s: float) -> list[Row]:
    """Rows of the first statement of ``sql`` on a read-only, write-refusing, limited connection (or _QueryFailed)."""
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
        _limit(conn, deadline)
        conn.set_authorizer(_authorize)
        return _fetch(conn.execute(statement))
    except _SQL_ERRORS as exc:
        if time.monotonic() > deadline:
            raise _QueryFailed(f"timed out after {timeout_s}s") from exc
        raise _QueryFailed(_reason(exc)) from exc
    finally:
        conn.close()


def execution_match(
    db_path: str | os.PathLike[str], gold: str, pred: str, timeout_s: float = 5.0, strip_fences: bool = True
) -> bool:
    """True when ``pred`` returns the same result as ``gold`` on the database (rules in the module docstring).

    A prediction that fails, is refused, times out or passes a limit is no match; a gold query that fails raises
    EvaluationError. With ``strip_fences`` (the default) a prediction that is one Markdown code block is run
    without its fence; ``strip_fences=False`` runs it as written (the raw score: a fenced query fails to prepare).
    """
    try:
        gold_rows = _execute(db_path, gold, timeout_s)
    except _QueryFailed as exc:
        raise EvaluationError(f"gold query failed on {db_path}: {gold!r}: {exc}") from exc
    try:
        pred_rows = _execute(db_path, strip_code_fence(pred) if strip_fences else pred, timeout_s)
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


def _authorize_build(action: int, arg1: str | None, arg2: str | None, db_name: str | None, *_: Any) -> int:
    """Creating tables in the database being built and inserting into them, nothing else (see _BUILD_ACTIONS)."""
    if action == sqlite3.SQLITE_FUNCTION:
        ok = (arg2 or "").lower() not in _DENIED_FUNCTIONS
    elif action == sqlite3.SQLITE_UPDATE:
        ok = arg1 in _BUILD_UPDATABLE and db_name == "main"
    elif action == sqlite3.SQLITE_PRAGMA:
        ok = (arg1 or "").lower() in _BUILD_PRAGMAS and db_name in (None, "main")
    else:
        ok = action in _BUILD_ACTIONS and db_name in (None, "main")
    return sqlite3.SQLITE_OK if ok else sqlite3.SQLITE_DENY


def _short(text: str, limit: int = 300) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _run_context(conn: sqlite3.Connection, context: str, deadline: float, timeout_s: float) -> None:
    """Each statement of the untrusted ``context``: CREATE TABLE or INSERT only, under the build's limits."""
    for statement in split_statements(context):
        word = _FIRST_WORD.match(_mask(statement))
        if word is None or word.group(1).upper() not in _CONTEXT_KEYWORDS:
            raise EvaluationError(f"schema context statement refused (only CREATE TABLE and INSERT run): "
                                  f"{_short(statement)}")
        try:
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError("interrupted")
            conn.execute(statement)
        except _SQL_ERRORS as exc:
            why = f"timed out after {timeout_s}s" if time.monotonic() > deadline else _reason(exc)
            raise EvaluationError(f"schema context statement failed: {_short(statement)}: {why}") from exc


def _fill(conn: sqlite3.Connection, rng: random.Random, rows: int, literals: Sequence[str | int | float]) -> None:
    """Insert ``rows`` synthetic rows into every table the context created, and commit."""
    tables = [
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    ]
    if not tables:
        raise _QueryFailed("creates no table")
    for table in tables:
        columns = conn.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
        values = [_column(rng, _kind(col[2] or ""), rows, literals) for col in columns]
        names = ", ".join(_quote(col[1]) for col in columns)
        marks = ", ".join("?" for _ in columns)
        # OR IGNORE: a PRIMARY KEY / UNIQUE column simply keeps fewer rows.
        insert = f"INSERT OR IGNORE INTO {_quote(table)} ({names}) VALUES ({marks})"
        conn.executemany(insert, list(zip(*values, strict=True)))
    conn.commit()


def _build(
    path: Path,
    context: str,
    rng: random.Random,
    rows: int,
    literals: Sequence[str | int | float],
    timeout_s: float = 5.0,
) -> None:
    """Build one synthetic database at ``path`` from the untrusted ``context`` (the sandbox: module docstring).

    Raises EvaluationError when the context breaks a rule or a limit (time, size, memory) or creates no table.
    """
    deadline = time.monotonic() + timeout_s
    conn = sqlite3.connect(path)
    try:
        _limit(conn, deadline)
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {max(2, MAX_SCHEMA_DB_BYTES // page_size)}")
        conn.set_authorizer(_authorize_build)  # from here on no pragma can raise the limits set above
        _run_context(conn, context, deadline, timeout_s)
        _fill(conn, rng, rows, literals)
    except _QueryFailed as exc:
        raise EvaluationError(f"schema context {exc}: {context!r}") from None
    except _SQL_ERRORS as exc:
        why = f"timed out after {timeout_s}s" if time.monotonic() > deadline else _reason(exc)
        raise EvaluationError(f"filling the tables of schema context {_short(context)} failed: {why}") from exc
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
    timeout_s: float = 5.0,
) -> list[Path]:
    """Build (or reuse) ``n`` seeded SQLite databases from the ``CREATE TABLE`` statements in ``context``.

    Each table gets ``rows`` rows. Every column draws with repeats from a small pool (3 to 6 values, so GROUP BY
    and WHERE hit): up to 3 values from ``literals`` (numbers and their neighbours +-1 for INTEGER/NUMERIC
    columns, +-0.5 for REAL; strings, numbers as text and LIKE patterns without ``%`` for text columns) plus
    filler (1..10, 0.5..10.0, or a small word list). Database ``i`` is seeded by ``(seed, i)``. The files live
    in ``workdir/schema-<hash>/``, keyed by a hash of (context, seed, n, rows, literals), and are reused.

    The context is untrusted: it runs in the sandbox the module docstring describes, each database within
    ``timeout_s`` seconds and ``MAX_SCHEMA_DB_BYTES`` bytes; a context that breaks a rule or a limit raises
    EvaluationError and leaves no database (nor any file outside ``workdir``).
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
            _build(tmp, context, random.Random(f"{seed}:{i}"), rows, lits, timeout_s)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            tmp.with_name(f"{tmp.name}-journal").unlink(missing_ok=True)
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
    strip_fences: bool = True,
) -> bool:
    """:func:`execution_match` on each of ``n`` synthetic databases built from ``context``; True only if all match.

    The databases are seeded with the literals of ``gold`` (:func:`literals_from`) so its WHERE clauses can hit.
    Built in a temporary folder unless ``workdir`` is given (then cached there). A gold query that fails on a
    synthetic database raises EvaluationError. Caveat: a gold query whose result is empty on every database is
    matched by any prediction that is empty too.

    ``timeout_s`` bounds each database's build as well as each query. A context that breaks the sandbox's rules or
    limits raises EvaluationError (a counted failure, like a failing gold query). ``strip_fences`` as in
    :func:`execution_match`.
    """
    literals = literals_from(gold)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="bakeoff-sql-") as tmp:
            return execution_match_schema(context, gold, pred, seed, n, timeout_s, tmp, rows, strip_fences)
    dbs = schema_databases(context, seed, n, rows, workdir=workdir, literals=literals, timeout_s=timeout_s)
    return all(execution_match(db, gold, pred, timeout_s, strip_fences) for db in dbs)
