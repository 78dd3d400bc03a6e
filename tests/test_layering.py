"""Keep the library's layering: which bakeoff modules may import which, and what they may import at module level.

The checks read the source with ``ast`` and never import it, so they run without any of the stage extras installed
and cannot be fooled by import side effects. Each rule is a plain function that takes the package folder (the one
holding ``__init__.py``, by default ``src/bakeoff``) and returns one line per violation, ``path:line: what (why)``;
the tests at the bottom run the same functions on small planted trees to show that each rule catches what it should.

The layers, lowest first (a module may import bakeoff modules of its own layer or a lower one, never a higher one):

0 foundation       bakeoff (the package ``__init__``), bakeoff.errors, bakeoff.jsonl
1 helpers          bakeoff.storage, bakeoff.images, bakeoff.templates, bakeoff.stats, bakeoff.fixtures
2 spec             bakeoff.spec
3 shared services  bakeoff.artifacts, bakeoff.cluster, bakeoff.endpoints, bakeoff.models
4 stages           bakeoff.data, bakeoff.train, bakeoff.generate, bakeoff.evaluate, bakeoff.report (siblings)
5 runner           bakeoff.stages
6 entry            bakeoff.cli, bakeoff.__main__

A name in the table covers itself and everything below it (``bakeoff.spec`` is ``bakeoff.spec`` whether it is a
module or a package, and ``bakeoff.spec.data`` too), except ``bakeoff``, which is only the package's ``__init__``.
A new module must be placed in the table on purpose: one that matches no entry is reported.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC_ROOT = REPO_ROOT / "src" / "bakeoff"
PACKAGE = "bakeoff"

STAGE_PACKAGES = ("bakeoff.data", "bakeoff.train", "bakeoff.generate", "bakeoff.evaluate", "bakeoff.report")

# (layer name, the modules or packages in it), lowest layer first; a layer's number is its position here.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("bakeoff", "bakeoff.errors", "bakeoff.jsonl")),
    ("helpers", ("bakeoff.storage", "bakeoff.images", "bakeoff.templates", "bakeoff.stats", "bakeoff.ranking",
                 "bakeoff.fixtures")),
    ("spec", ("bakeoff.spec",)),
    ("shared services", ("bakeoff.artifacts", "bakeoff.capacity", "bakeoff.cluster", "bakeoff.endpoints",
                         "bakeoff.models")),
    ("stages", STAGE_PACKAGES),
    ("runner", ("bakeoff.stages",)),
    ("entry", ("bakeoff.cli", "bakeoff.__main__")),
)

# Top-level names that are KFP: kfp itself (kfp.dsl, kfp.kubernetes, ...) and its companion distributions.
KFP_MODULES = frozenset({"kfp", "kfp_kubernetes", "kfp_server_api", "kfp_pipeline_spec"})

# The only non-stdlib top-level names a module may import at module level.
LIGHT_THIRD_PARTY = frozenset({"pydantic", "yaml", PACKAGE})

MAX_FUNCTION_LINES = 80

# Functions allowed to stay longer than MAX_FUNCTION_LINES: {"path::qualname": "why"}, the path as the violation
# lines print it (e.g. "src/bakeoff/train/finetune.py::finetune", methods as "Class.method", nested functions as
# "outer.inner"). Keep it empty if you can; test_allowed_long_entries_are_current fails on entries gone stale.
ALLOWED_LONG: dict[str, str] = {}


# --------------------------------------------------------------------------------------------------------------
# Reading the tree


@dataclass(frozen=True)
class Module:
    path: Path
    shown: str  # the path as violation lines print it
    name: str  # dotted module name, e.g. "bakeoff.train.finetune"
    is_package: bool  # an __init__.py
    tree: ast.Module


@dataclass(frozen=True)
class ImportRef:
    lineno: int
    target: str | None  # absolute dotted name imported; None when a relative import climbs out of the package


def shown_path(path: Path, root: Path) -> str:
    """The path relative to the repository when it is in it (src/bakeoff/...), else relative to root's parent."""
    for base in (REPO_ROOT, root.parent):
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            continue
    return path.as_posix()


def iter_modules(root: Path) -> list[Module]:
    """Every .py file under root, parsed, with its module name (root is the ``bakeoff`` package folder)."""
    root = Path(root).resolve()
    modules = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        modules.append(Module(path, shown_path(path, root), ".".join([PACKAGE, *parts]), is_package, tree))
    return modules


def module_exists(root: Path, name: str) -> bool:
    """Whether the dotted bakeoff module name is a file or package under root."""
    parts = name.split(".")[1:]
    if not parts:
        return True
    base = Path(root).joinpath(*parts)
    return base.with_suffix(".py").is_file() or base.is_dir()


def layer_of(name: str) -> tuple[int, str] | None:
    """(layer number, table entry) for a bakeoff module name, by the longest matching entry; None if none matches."""
    best: tuple[int, str] | None = None
    for number, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            covers = name == entry or (entry != PACKAGE and name.startswith(entry + "."))
            if covers and (best is None or len(entry) > len(best[1])):
                best = (number, entry)
    return best


def is_bakeoff(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")  # not bakeoff_pipelines


def resolve_from(module: Module, node: ast.ImportFrom) -> str | None:
    """The absolute module a ``from ... import`` reads from, relative imports resolved against the module's package."""
    if node.level == 0:
        return node.module
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    parts = package.split(".")
    if node.level - 1 >= len(parts):
        return None
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def iter_imports(module: Module, root: Path) -> Iterator[ImportRef]:
    """Every import anywhere in the module (functions included), one per distinct module it pulls in.

    ``from bakeoff import spec`` imports bakeoff.spec, not bakeoff: a name after ``import`` counts as a submodule
    when it is one under root, or when the layer table places it somewhere else than the module it comes from.
    """
    nodes = [node for node in ast.walk(module.tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    for node in sorted(nodes, key=lambda node: node.lineno):  # ast.walk is breadth first: back to line order
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield ImportRef(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            source = resolve_from(module, node)
            if source is None:
                yield ImportRef(node.lineno, None)
                continue
            if not is_bakeoff(source):
                yield ImportRef(node.lineno, source)
                continue
            targets = []
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                elsewhere = layer_of(candidate) not in (None, layer_of(source))
                if alias.name != "*" and (module_exists(root, candidate) or elsewhere):
                    targets.append(candidate)
                else:
                    targets.append(source)
            for target in dict.fromkeys(targets):
                yield ImportRef(node.lineno, target)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: at top level, in if/try/with/... and in class bodies.

    Function bodies run later and are skipped, and so are ``if TYPE_CHECKING:`` bodies (their ``else`` is not).
    """

    def visit(nodes: Iterable[ast.AST]) -> Iterator[ast.Import | ast.ImportFrom]:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node
            elif isinstance(node, ast.If) and is_type_checking(node.test):
                yield from visit(node.orelse)
            else:
                yield from visit(ast.iter_child_nodes(node))

    yield from visit(tree.body)


def iter_functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualname, node) for every def and async def: methods as Class.method, nested functions as outer.inner."""

    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + child.name, child
                yield from visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.")
            else:
                yield from visit(child, prefix)

    yield from visit(tree, "")


def function_lengths(root: Path) -> dict[str, tuple[str, int, int]]:
    """{"path::qualname": (shown path, line, length)}; a name defined twice keeps its longest definition."""
    lengths: dict[str, tuple[str, int, int]] = {}
    for module in iter_modules(root):
        for qualname, node in iter_functions(module.tree):
            key = f"{module.shown}::{qualname}"
            length = node.end_lineno - node.lineno + 1
            if key not in lengths or length > lengths[key][2]:
                lengths[key] = (module.shown, node.lineno, length)
    return lengths


# --------------------------------------------------------------------------------------------------------------
# The rules: each returns one line per violation


def check_no_kfp(root: Path) -> list[str]:
    """Rule 1: no module imports KFP, at any nesting."""
    violations = []
    for module in iter_modules(root):
        for ref in iter_imports(module, root):
            if ref.target and ref.target.split(".")[0] in KFP_MODULES:
                violations.append(
                    f"{module.shown}:{ref.lineno}: imports {ref.target} "
                    "(the library must not depend on KFP: KFP code belongs in components/ or pipelines/)"
                )
    return violations


def check_layers(root: Path) -> list[str]:
    """Rule 2: imports go to the same layer or lower, stage packages never import each other, every module is placed."""
    violations = []
    for module in iter_modules(root):
        source = layer_of(module.name)
        if source is None:
            violations.append(f"{module.shown}:1: module {module.name} is not in the layer table: add it")
            continue
        source_layer, source_entry = source
        for ref in iter_imports(module, root):
            if ref.target is None:
                violations.append(f"{module.shown}:{ref.lineno}: relative import climbs above the {PACKAGE} package")
                continue
            if not is_bakeoff(ref.target):
                continue
            target = layer_of(ref.target)
            if target is None:
                violations.append(f"{module.shown}:{ref.lineno}: imports {ref.target} (not in the layer table: add it)")
                continue
            target_layer, target_entry = target
            if target_layer > source_layer:
                violations.append(
                    f"{module.shown}:{ref.lineno}: imports {ref.target} (layer {source_layer} "
                    f'"{LAYERS[source_layer][0]}" may not import layer {target_layer} "{LAYERS[target_layer][0]}")'
                )
            elif source_entry in STAGE_PACKAGES and target_entry in STAGE_PACKAGES and source_entry != target_entry:
                violations.append(
                    f"{module.shown}:{ref.lineno}: imports {ref.target} (stage package "
                    f"{source_entry.rpartition('.')[2]} may not import stage package {target_entry.rpartition('.')[2]})"
                )
    return violations


def check_module_level_imports(root: Path) -> list[str]:
    """Rule 3: at module level only the stdlib, pydantic, yaml and bakeoff itself."""
    violations = []
    for module in iter_modules(root):
        for node in module_level_imports(module.tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    continue  # relative: bakeoff itself
                names = [node.module or ""]
            else:
                names = [alias.name for alias in node.names]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in LIGHT_THIRD_PARTY:
                    violations.append(
                        f"{module.shown}:{node.lineno}: imports {name} at module level "
                        "(only the stdlib, pydantic, yaml and bakeoff may be: import it in the function that uses it)"
                    )
    return violations


def check_function_length(
    root: Path, allowed: Mapping[str, str] = ALLOWED_LONG, limit: int = MAX_FUNCTION_LINES
) -> list[str]:
    """Rule 4: no function longer than limit lines, except those in allowed."""
    violations = []
    for key, (shown, lineno, length) in function_lengths(root).items():
        if length > limit and key not in allowed:
            qualname = key.partition("::")[2]
            violations.append(
                f"{shown}:{lineno}: function {qualname} is {length} lines "
                f'(limit {limit}: split it, or list "{key}" in ALLOWED_LONG with the reason)'
            )
    return violations


def check_allowed_long(
    root: Path, allowed: Mapping[str, str] = ALLOWED_LONG, limit: int = MAX_FUNCTION_LINES
) -> list[str]:
    """Rule 4, the other way: every allowed entry still names a function, and one still over the limit."""
    lengths = function_lengths(root)
    violations = []
    for key in allowed:
        if key not in lengths:
            violations.append(f'ALLOWED_LONG["{key}"]: no such function any more: remove the entry (or fix its name)')
        elif lengths[key][2] <= limit:
            violations.append(
                f'ALLOWED_LONG["{key}"]: now {lengths[key][2]} lines, within the limit of {limit}: remove the entry'
            )
    return violations


def assert_no_violations(violations: list[str], rule: str) -> None:
    if violations:
        lines = "\n".join(f"  {line}" for line in violations)
        pytest.fail(f"{len(violations)} violation(s) of: {rule}\n{lines}", pytrace=False)


# --------------------------------------------------------------------------------------------------------------
# The rules on the real tree


def test_source_tree_is_found():
    """Guard: if src/bakeoff moved, the rules below would pass by checking nothing."""
    assert (SRC_ROOT / "__init__.py").is_file(), f"no package at {SRC_ROOT}"
    assert len(iter_modules(SRC_ROOT)) > 5, f"hardly any modules under {SRC_ROOT}"


def test_library_does_not_import_kfp():
    """The library runs inside the stage images and on laptops; only components/ and pipelines/ know KFP.

    A KFP import anywhere in the library, even inside a function, would make the stage images carry kfp and tie
    the code that does the work to the orchestrator that schedules it.
    """
    assert_no_violations(check_no_kfp(SRC_ROOT), "the library never imports kfp (or kfp.*, kfp_kubernetes)")


def test_imports_follow_the_layers():
    """Modules import only their own layer or lower ones, and the stage packages are siblings.

    Stages never import each other so that each stage's image carries only its own code (and its own extras):
    shared code goes down a layer (helpers, spec or shared services), and only the runner knows every stage.
    A module missing from the table is reported too, so that each new module is placed on purpose.
    """
    assert_no_violations(
        check_layers(SRC_ROOT),
        "a module may import bakeoff modules of its own layer or lower, and no stage package another",
    )


def test_heavy_imports_are_inside_functions():
    """At module level only the stdlib, pydantic, yaml and bakeoff itself (``if TYPE_CHECKING:`` excepted).

    Everything else (torch, transformers, jinja2, matplotlib, openai, minio, ...) is imported inside the function
    that needs it, so that ``bakeoff validate`` and the report and prepare images do not load torch, and a module
    can be imported where only its stage's extra is installed.
    """
    assert_no_violations(
        check_module_level_imports(SRC_ROOT),
        "module-level imports are only the stdlib, pydantic, yaml and bakeoff",
    )


def test_functions_are_short():
    """Functions stay within MAX_FUNCTION_LINES lines, so that each does one thing and reads on a screen.

    Nested functions are measured on their own and also count toward the function around them.
    """
    assert_no_violations(
        check_function_length(SRC_ROOT),
        f"functions are at most {MAX_FUNCTION_LINES} lines (or listed in ALLOWED_LONG)",
    )


def test_allowed_long_entries_are_current():
    """ALLOWED_LONG shrinks as functions are split or moved: stale entries are removed, not left to excuse others."""
    assert_no_violations(check_allowed_long(SRC_ROOT), "every ALLOWED_LONG entry names a function still too long")


# --------------------------------------------------------------------------------------------------------------
# The rules on planted trees


def long_function(name: str, lines: int, indent: str = "") -> str:
    """Source of a def that is exactly `lines` lines long."""
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 2))
    return f"{indent}def {name}():\n{body}{indent}    return None\n"


# A small tree that keeps every rule, using each allowance at least once.
CLEAN_TREE: dict[str, str] = {
    "__init__.py": '"""Fake bakeoff."""\n\n__version__ = "0"\n',
    "__main__.py": "from bakeoff.cli import main\n\nmain()\n",
    "errors.py": "class BakeoffError(Exception):\n    pass\n",
    "jsonl.py": "import json\nfrom pathlib import Path\n\nfrom bakeoff.errors import BakeoffError\n",
    "templates.py": "from bakeoff import errors\nfrom bakeoff import __version__\n",
    "storage.py": "import os\n\nfrom .errors import BakeoffError\n\n\ndef client():\n    import minio\n",
    "fixtures/__init__.py": "from bakeoff.fixtures.sql import write_sql_fixture\n",
    "fixtures/sql.py": "import sqlite3\n\nfrom bakeoff.jsonl import json\n\n\ndef write_sql_fixture():\n    pass\n",
    "spec/__init__.py": (
        "from __future__ import annotations\n\nimport yaml\nfrom pydantic import BaseModel\n\n"
        "from bakeoff.templates import errors\nfrom .data import DataSpec\n"
    ),
    "spec/data.py": "from pydantic import BaseModel\n\n\nclass DataSpec(BaseModel):\n    name: str\n",
    "models/__init__.py": "from bakeoff.spec.data import DataSpec\nfrom bakeoff import storage, spec\n",
    "data/__init__.py": "from bakeoff.data.prepare import read_split\n",
    "data/prepare.py": (
        "from bakeoff.spec import DataSpec\nfrom bakeoff.fixtures import sql\n\n\n"
        "def read_split():\n    import datasets\n\n    return datasets\n"
    ),
    "train/__init__.py": "from .finetune import finetune\n",
    "train/methods.py": "",
    "train/finetune.py": (
        "from typing import TYPE_CHECKING\n\nfrom bakeoff.models import storage\nfrom . import methods\n"
        "from ..spec import DataSpec\n\nif TYPE_CHECKING:\n    import torch\n\n\n"
        "class Trainer:\n    def run(self):\n        import torch\n\n        return torch\n"
    ),
    "report/__init__.py": "from bakeoff.report.render import render\n",
    "report/render.py": "\n".join(
        [
            "import typing",
            "",
            "",
            long_function("render", MAX_FUNCTION_LINES)  # right at the limit
            + "\n\n"
            + "def outer():\n    import jinja2\n\n"
            + long_function("inner", 20, indent="    ")
            + "    return inner\n",
        ]
    ),
    "stages.py": "from bakeoff import data, train, report\nfrom bakeoff.report.render import render\n",
    "cli.py": (
        "import argparse\n\nfrom bakeoff.stages import run\n\n\ndef main():\n"
        "    from bakeoff_pipelines import compile_pipeline\n\n    return compile_pipeline\n"
    ),
}

EVERY_CHECK = (check_no_kfp, check_layers, check_module_level_imports, check_function_length, check_allowed_long)


def plant(tmp_path: Path, changes: Mapping[str, str | None] = {}) -> Path:
    """Write CLEAN_TREE under tmp_path/bakeoff with changes applied (None deletes a file); returns the package root."""
    root = tmp_path / PACKAGE
    for rel, text in {**CLEAN_TREE, **changes}.items():
        if text is not None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize("check", EVERY_CHECK, ids=lambda check: check.__name__)
def test_clean_tree_reports_nothing(tmp_path, check):
    assert check(plant(tmp_path)) == []


PLANTED = [
    pytest.param(
        check_layers,
        {"train/finetune.py": "from bakeoff.data.prepare import read_split\n"},
        [
            "bakeoff/train/finetune.py:1: imports bakeoff.data.prepare"
            " (stage package train may not import stage package data)"
        ],
        id="stage-imports-sibling-stage",
    ),
    pytest.param(
        check_layers,
        {"evaluate/__init__.py": "", "evaluate/metrics.py": "", "report/__init__.py": "from ..evaluate import metrics"},
        [
            "bakeoff/report/__init__.py:1: imports bakeoff.evaluate.metrics"
            " (stage package report may not import stage package evaluate)"
        ],
        id="stage-imports-sibling-stage-relatively",
    ),
    pytest.param(
        check_layers,
        {"spec/__init__.py": "import bakeoff.train\n"},
        ['bakeoff/spec/__init__.py:1: imports bakeoff.train (layer 2 "spec" may not import layer 4 "stages")'],
        id="spec-package-imports-stage",
    ),
    pytest.param(
        check_layers,
        {"spec/__init__.py": None, "spec/data.py": None, "spec.py": "from bakeoff.data.prepare import read_split\n"},
        ['bakeoff/spec.py:1: imports bakeoff.data.prepare (layer 2 "spec" may not import layer 4 "stages")'],
        id="spec-module-imports-stage",
    ),
    pytest.param(
        check_layers,
        {"storage.py": "def client():\n    from bakeoff import cli\n"},
        ['bakeoff/storage.py:2: imports bakeoff.cli (layer 1 "helpers" may not import layer 6 "entry")'],
        id="helper-imports-entry-inside-function",
    ),
    pytest.param(
        check_layers,
        {"misc.py": "import json\n"},
        ["bakeoff/misc.py:1: module bakeoff.misc is not in the layer table: add it"],
        id="unknown-module",
    ),
    pytest.param(
        check_layers,
        {"cli.py": "import bakeoff.misc\n"},
        ["bakeoff/cli.py:1: imports bakeoff.misc (not in the layer table: add it)"],
        id="import-of-unknown-module",
    ),
    pytest.param(
        check_module_level_imports,
        {"data/prepare.py": "import json\nimport torch\n"},
        ["bakeoff/data/prepare.py:2: imports torch at module level"],
        id="module-level-torch",
    ),
    pytest.param(
        check_module_level_imports,
        {"data/prepare.py": "try:\n    import torch\nexcept ImportError:\n    torch = None\n"},
        ["bakeoff/data/prepare.py:2: imports torch at module level"],
        id="torch-in-module-level-try",
    ),
    pytest.param(
        check_module_level_imports,
        {"report/render.py": "class Renderer:\n    from jinja2 import Template\n"},
        ["bakeoff/report/render.py:2: imports jinja2 at module level"],
        id="jinja2-in-class-body",
    ),
    pytest.param(
        check_module_level_imports,
        {"report/render.py": "import typing\nif typing.TYPE_CHECKING:\n    import torch\nelse:\n    import jinja2\n"},
        ["bakeoff/report/render.py:5: imports jinja2 at module level"],
        id="jinja2-in-type-checking-else",
    ),
    pytest.param(
        check_no_kfp,
        {"cli.py": "def main():\n    import kfp\n"},
        ["bakeoff/cli.py:2: imports kfp (the library must not depend on KFP"],
        id="kfp-inside-function",
    ),
    pytest.param(
        check_no_kfp,
        {"stages.py": "from kfp import dsl\n\n\ndef run():\n    import kfp_kubernetes\n"},
        ["bakeoff/stages.py:1: imports kfp (", "bakeoff/stages.py:5: imports kfp_kubernetes ("],
        id="kfp-dsl-and-kfp-kubernetes",
    ),
    pytest.param(
        check_function_length,
        {"report/render.py": long_function("render", 90)},
        ["bakeoff/report/render.py:1: function render is 90 lines (limit 80"],
        id="90-line-function",
    ),
    pytest.param(
        check_function_length,
        {"report/render.py": "class Renderer:\n" + long_function("render", 81, indent="    ")},
        ["bakeoff/report/render.py:2: function Renderer.render is 81 lines (limit 80"],
        id="81-line-method",
    ),
    pytest.param(
        check_function_length,
        {"report/render.py": "async def outer():\n" + long_function("inner", 85, indent="    ")},
        [
            "bakeoff/report/render.py:1: function outer is 86 lines (limit 80",
            "bakeoff/report/render.py:2: function outer.inner is 85 lines (limit 80",
        ],
        id="nested-function-counts-twice",
    ),
]


@pytest.mark.parametrize(("check", "changes", "expected"), PLANTED)
def test_planted_violation_is_reported(tmp_path, check, changes, expected):
    """Each planted violation is reported, and nothing else is (the rest of the planted tree is clean)."""
    violations = check(plant(tmp_path, changes))
    assert len(violations) == len(expected), "\n".join(violations)
    for line, prefix in zip(violations, expected, strict=True):
        assert line.startswith(prefix), f"expected a line starting {prefix!r}, got {line!r}"


def test_allowed_long_exempts_a_function(tmp_path):
    root = plant(tmp_path, {"report/render.py": long_function("render", 90)})
    allowed = {"bakeoff/report/render.py::render": "planted"}
    assert check_function_length(root, allowed) == []
    assert check_allowed_long(root, allowed) == []


def test_stale_allowed_long_entries_are_reported(tmp_path):
    allowed = {"bakeoff/report/render.py::gone": "moved away", "bakeoff/report/render.py::render": "was long"}
    assert check_allowed_long(plant(tmp_path), allowed) == [
        'ALLOWED_LONG["bakeoff/report/render.py::gone"]: no such function any more: remove the entry (or fix its name)',
        'ALLOWED_LONG["bakeoff/report/render.py::render"]: now 80 lines, within the limit of 80: remove the entry',
    ]


def test_real_tree_paths_are_shown_from_the_repository():
    """Violation lines on the real tree name files as src/bakeoff/..., as ALLOWED_LONG keys do."""
    assert iter_modules(SRC_ROOT)[0].shown.startswith("src/bakeoff/")
