"""What each stage image must be able to import, derived from the code: read with ``ast``, never imported.

A stage's image runs its component's body (``components/stages.py``, the function whose decorator says
``base_image=image_for("<stage>")``; KFP ships that body alone) and the CLI: its module on import (the image's
command is ``python -m bakeoff.cli``) and the stage's own command (``bakeoff prepare`` ...; ``generate`` for
generate-vllm), and what those reach. Other CLI commands (``validate``, ``plan``, ``tokens``, ``run``) are not
a stage's and may need more than its image has.

Reachability is traced per top-level function and class, not per module: ``bakeoff.stages`` imports each stage
package inside its ``run_*`` function, and a shared module such as ``bakeoff.models.loading`` has functions one
stage calls and others another stage calls, so a module-wide rule would conclude that every stage needs everything.

The rule (conservative where the code is dynamic):

- reaching a unit (a top-level def or class of a module; ``<module>``: the code that runs on import; ``<main>``: the
  ``if __name__ == "__main__":`` block of a module run with ``-m``) reaches ``<module>`` of its module and of every
  package above it;
- every import statement in a reached unit is executed: a first-party module's ``<module>`` is reached, a
  third-party one is recorded as a *use* (function-level imports included; ``if TYPE_CHECKING:`` bodies excluded);
- every name the unit refers to (``f``, ``module.f``, ``pkg.module.Class``) is resolved through the imports in the
  unit and in its module (re-exports followed) to the def or class it names, which is reached; a class reaches all
  of its methods; a module-level variable reaches its module's ``<module>``; a first-party module used as a bare
  value reaches every unit in it;
- ``"-m", "pkg.mod"`` in a list or tuple (a subprocess ``python -m``) runs that module: ``<main>`` of a first-party
  one, a use of a third-party one.

A use is covered when one of the distributions that install its top-level module
(``importlib.metadata.packages_distributions()`` of this venv; the module's own name for one not installed here,
such as vllm) is among the stage's requirements: the core dependencies, the stage's extra and the pipeline extra
(what ``images/scripts/requirements.py`` installs), and, transitively, what those require (the installed
distributions' metadata, markers and extras evaluated).
"""

from __future__ import annotations

import ast
import re
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# first-party top-level package -> its folder (pyproject's [tool.setuptools] package-dir)
FIRST_PARTY = {"bakeoff": ROOT / "src" / "bakeoff", "bakeoff_components": ROOT / "components",
               "bakeoff_pipelines": ROOT / "pipelines"}
PYPROJECT = ROOT / "pyproject.toml"
COMPONENTS = "bakeoff_components.stages"
CLI = "bakeoff.cli"
# KFP runs every component body through this module (kfp's own preamble; the pipeline extra provides it)
KFP_EXECUTOR = "kfp.dsl.executor_main"
MODULE, MAIN = "<module>", "<main>"
BODY = "body:"  # a component function's body alone (the code KFP runs in the container)

# Imports a stage may reach without its image providing them: {(image, top-level module, "path::qualname"): why}.
# Each entry must still be reached and not installed (test_optional_entries_are_current): the list shrinks with
# the code.
OPTIONAL: dict[tuple[str, str, str], str] = {
    ("generate", "vllm", "src/bakeoff/generate/backends.py::vllm_available"):
        "guarded by try/except ImportError: without vllm the backend resolves to transformers",
    ("generate", "vllm", "src/bakeoff/generate/backends.py::vllm_answers"):
        "only after vllm_available() (backend vllm is refused where vllm does not import): the generate-vllm image",
    ("generate", "vllm", "src/bakeoff/generate/generate.py::_vllm_answerer"):
        "only after vllm_available() (backend vllm is refused where vllm does not import): the generate-vllm image",
}


@dataclass(frozen=True)
class Use:
    """A third-party module a reached unit imports (or runs with ``-m``)."""

    module: str  # dotted, as imported
    names: tuple[str, ...]  # ``from module import names``; () for ``import module``
    unit: tuple[str, str]  # (first-party module, unit) it is in: a top-level def or class, <module> or <main>
    path: str  # shown path of the file
    lineno: int
    guarded: bool  # inside try/except ImportError
    run: bool = False  # ``-m module`` rather than an import

    @property
    def qualname(self) -> str:
        return self.unit[1].removeprefix(BODY)

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    @property
    def where(self) -> str:
        return f"{self.path}::{self.qualname}"

    @property
    def statement(self) -> str:
        return f"from {self.module} import {', '.join(self.names)}" if self.names else f"import {self.module}"


@dataclass
class Module:
    name: str
    path: Path
    shown: str
    is_package: bool
    tree: ast.Module
    defs: dict[str, ast.AST] = field(default_factory=dict)  # top-level def / class name -> node
    bindings: dict[str, tuple] = field(default_factory=dict)  # module-level import bindings
    assigned: set[str] = field(default_factory=set)  # module-level variables
    guarded: set[int] = field(default_factory=set)  # ids of the import nodes inside try/except ImportError


# --------------------------------------------------------------------------------------------------------------
# Reading the first-party tree


class Tree:
    """The first-party modules under ``roots`` ({top-level package: folder}), parsed on first use."""

    def __init__(self, roots: Mapping[str, Path] = FIRST_PARTY, shown_base: Path = ROOT):
        self.roots = {top: Path(folder) for top, folder in roots.items()}
        self.shown_base = Path(shown_base)
        self._modules: dict[str, Module | None] = {}

    def is_first_party(self, name: str) -> bool:
        return name.split(".")[0] in self.roots

    def file_of(self, name: str) -> tuple[Path, bool] | None:
        top, *rest = name.split(".")
        if top not in self.roots:
            return None
        base = self.roots[top].joinpath(*rest)
        if (base / "__init__.py").is_file():
            return base / "__init__.py", True
        if rest and base.with_suffix(".py").is_file():
            return base.with_suffix(".py"), False
        return None

    def get(self, name: str) -> Module | None:
        if name not in self._modules:
            found = self.file_of(name)
            self._modules[name] = None if found is None else self._parse(name, *found)
        return self._modules[name]

    def _parse(self, name: str, path: Path, is_package: bool) -> Module:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        try:
            shown = path.relative_to(self.shown_base).as_posix()
        except ValueError:
            shown = path.as_posix()
        module = Module(name, path, shown, is_package, tree, guarded=guarded_imports(tree))
        for node in import_time_nodes(tree.body):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module.bindings.update(bind(module, node, self))
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                module.assigned.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                module.defs[node.name] = node
        return module


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def is_main_guard(test: ast.expr) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def import_time_nodes(body: Iterable[ast.AST], main: bool = False) -> Iterator[ast.AST]:
    """The nodes that run when a module is imported (``main``: only those of its ``__main__`` block): function
    bodies skipped (their decorators kept), class bodies kept, ``if TYPE_CHECKING:`` bodies skipped."""
    for node in body:
        if isinstance(node, ast.If) and is_main_guard(node.test):
            if main:
                for child in node.body:
                    yield from ast.walk(child)
            continue
        if main:
            continue
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # the decorators run on import; the defaults are only evaluated (they count when the def is reached)
            for child in node.decorator_list:
                yield from ast.walk(child)
        elif isinstance(node, ast.ClassDef):
            for child in [*node.decorator_list, *node.bases, *node.keywords]:
                yield from ast.walk(child)
            yield from import_time_nodes(node.body)
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            yield from import_time_nodes(node.orelse)
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for name in ("test", "items", "iter"):
                part = getattr(node, name, None)
                for child in (part if isinstance(part, list) else [part] if part is not None else []):
                    yield from ast.walk(child)
            for name in ("body", "orelse", "finalbody", "handlers"):
                yield from import_time_nodes(getattr(node, name, []))
        elif isinstance(node, ast.ExceptHandler):
            if node.type is not None:
                yield from ast.walk(node.type)
            yield from import_time_nodes(node.body)
        else:
            yield from (child for child in ast.walk(node) if child is not node)


def resolve_from(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from."""
    if node.level == 0:
        return node.module or ""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def bind(module: Module, node: ast.Import | ast.ImportFrom, tree: Tree) -> dict[str, tuple]:
    """The names an import statement binds: ("module", name) or ("member", module, attribute)."""
    out = {}
    if isinstance(node, ast.Import):
        for alias in node.names:
            out[alias.asname or alias.name.split(".")[0]] = ("module", alias.name if alias.asname
                                                             else alias.name.split(".")[0])
        return out
    source = resolve_from(module, node)
    for alias in node.names:
        if alias.name == "*":
            continue
        sub = f"{source}.{alias.name}"
        target = ("module", sub) if tree.is_first_party(sub) and tree.file_of(sub) else ("member", source, alias.name)
        out[alias.asname or alias.name] = target
    return out


def imported_modules(module: Module, node: ast.Import | ast.ImportFrom, tree: Tree) -> list[str]:
    """The modules an import statement imports (a ``from pkg import sub`` of a first-party submodule included)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    source = resolve_from(module, node)
    subs = [f"{source}.{a.name}" for a in node.names
            if tree.is_first_party(source) and tree.file_of(f"{source}.{a.name}")]
    return [source, *subs]


IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def guarded_imports(tree: ast.Module) -> set[int]:
    """ids of the import nodes inside a ``try`` whose handlers catch ImportError (or a base of it, or anything)."""
    out = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = set()
        for handler in node.handlers:
            if handler.type is None:
                caught.add("BaseException")
            for n in ast.walk(handler.type) if handler.type is not None else []:
                if isinstance(n, (ast.Name, ast.Attribute)):
                    caught.add(n.id if isinstance(n, ast.Name) else n.attr)
        if caught & IMPORT_ERRORS:
            for stmt in node.body:
                out.update(id(n) for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return out


# --------------------------------------------------------------------------------------------------------------
# Reachability


@dataclass
class Reach:
    """What a set of entries reaches: first-party units, with the unit each was first reached from, and uses."""

    units: dict[tuple[str, str], tuple[str, str] | None] = field(default_factory=dict)
    uses: list[Use] = field(default_factory=list)

    @property
    def modules(self) -> list[str]:
        """The first-party modules imported (a component module whose body alone runs is not)."""
        return sorted({module for module, qualname in self.units if not qualname.startswith(BODY)})

    def chain(self, unit: tuple[str, str]) -> list[str]:
        """How ``unit`` was reached, from its entry on."""
        out = []
        while unit is not None:
            module, qualname = unit[0], unit[1].removeprefix(BODY)
            out.append(f"{module} {qualname}" if qualname.startswith("<") else f"{module}.{qualname}")
            unit = self.units.get(unit)
        return out[::-1]


def reach(tree: Tree, entries: Iterable[tuple[str, str]], extra_uses: Iterable[Use] = ()) -> Reach:
    """Everything reachable from ``entries`` ((module, qualname) units)."""
    result = Reach(uses=list(extra_uses))
    # breadth first: each unit's recorded parent gives it a shortest chain from an entry
    todo: deque[tuple[tuple[str, str], tuple[str, str] | None]] = deque((entry, None) for entry in entries)
    while todo:
        unit, parent = todo.popleft()
        if unit in result.units:
            continue
        module = tree.get(unit[0])
        if module is not None and unit[1].startswith(BODY):
            # a component's body: KFP ships the function's source alone, so its module's code does not run
            result.units[unit] = parent
            for target, _ in scan_unit(tree, module, unit[1], module.guarded, result.uses):
                todo += [(t, unit) for t in targets_of(tree, target)]
            continue
        if module is None or (unit[1] not in (MODULE, MAIN) and unit[1] not in module.defs):
            unit = (unit[0], MODULE)  # a module-level variable, or something we cannot place: its module's code
            module = tree.get(unit[0])
            if module is None or unit in result.units:
                continue
        result.units[unit] = parent
        parts = module.name.split(".")
        todo += [((".".join(parts[:i]), MODULE), unit) for i in range(1, len(parts) + 1)]
        if unit[1] == MAIN:
            todo.append(((module.name, MODULE), unit))
        for target, _ in scan_unit(tree, module, unit[1], module.guarded, result.uses):
            todo += [(t, unit) for t in targets_of(tree, target)]
    return result


def unit_nodes(module: Module, qualname: str) -> list[ast.AST]:
    """The nodes of one unit."""
    if qualname in (MODULE, MAIN):
        return list(import_time_nodes(module.tree.body, main=qualname == MAIN))
    if qualname.startswith(BODY):
        return [n for stmt in module.defs[qualname.removeprefix(BODY)].body for n in ast.walk(stmt)]
    return list(ast.walk(module.defs[qualname]))


def scan_unit(tree: Tree, module: Module, qualname: str, guarded: set[int], uses: list[Use]):
    """Yield (binding target, node) for every name the unit refers to; record its third-party uses in ``uses``."""
    unit = (module.name, qualname)
    nodes, local = unit_nodes(module, qualname), {}
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            local.update(bind(module, node, tree))
    attribute_bases = {id(n.value) for n in nodes if isinstance(n, ast.Attribute)}
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in imported_modules(module, node, tree):
                if tree.is_first_party(name):
                    yield ("module", name), node
                elif name and name.split(".")[0] not in sys.stdlib_module_names and name != "__future__":
                    names = tuple(a.name for a in node.names) if isinstance(node, ast.ImportFrom) else ()
                    uses.append(Use(name, names, unit, module.shown, node.lineno, id(node) in guarded))
        elif isinstance(node, (ast.List, ast.Tuple)):
            for run in run_modules(node):
                if tree.is_first_party(run):
                    yield ("main", run), node
                elif run.split(".")[0] not in sys.stdlib_module_names:
                    uses.append(Use(run, (), unit, module.shown, node.lineno, False, run=True))
        elif id(node) in attribute_bases:
            continue
        elif isinstance(node, ast.Attribute) or (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)):
            chain = dotted(node)
            target = lookup(tree, module, local, chain[0]) if chain else None
            for attr in (chain or [])[1:]:
                if target is None or target[0] != "module":
                    break
                target = resolve_module_member(tree, target[1], attr)
            if target is not None:
                # a first-party module used as a value (not through an attribute): everything in it
                yield (target + ("bare",) if target[0] == "module" else target), node


def run_modules(node: ast.List | ast.Tuple) -> Iterator[str]:
    """The X of each ``"-m", "X"`` pair of string constants in a list or tuple."""
    values = [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str) else None for e in node.elts]
    for flag, name in zip(values, values[1:], strict=False):
        if flag == "-m" and name and re.fullmatch(r"[A-Za-z_][\w.]*", name):
            yield name


def dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *parts[::-1]]
    return None


def resolve_module_member(tree: Tree, name: str, attr: str) -> tuple:
    """``name.attr`` for a module ``name``: a submodule, or a member."""
    sub = f"{name}.{attr}"
    return ("module", sub) if tree.is_first_party(sub) and tree.file_of(sub) else ("member", name, attr)


def lookup(tree: Tree, module: Module, local: dict[str, tuple], name: str) -> tuple | None:
    if name in local:
        return local[name]
    if name in module.bindings:
        return module.bindings[name]
    if name in module.defs or name in module.assigned:
        return ("member", module.name, name)
    return None


def targets_of(tree: Tree, target: tuple, seen: frozenset = frozenset()) -> list[tuple[str, str]]:
    """The first-party units a binding target names (re-exports followed); [] for third-party ones."""
    kind, name = target[0], target[1]
    if not tree.is_first_party(name) or target in seen:
        return []
    if kind == "main":
        return [(name, MAIN)]
    if kind == "module":
        module = tree.get(name)
        # a module used as a value (not through an attribute): everything in it
        return [(name, MODULE)] + ([(name, d) for d in module.defs] if module and target[2:] == ("bare",) else [])
    attr = target[2]
    if tree.file_of(f"{name}.{attr}"):
        return [(f"{name}.{attr}", MODULE)]
    module = tree.get(name)
    if module is None:
        return []
    if attr in module.defs:
        return [(name, attr)]
    if attr in module.bindings:
        binding = module.bindings[attr]
        return targets_of(tree, binding + (("bare",) if binding[0] == "module" else ()), seen | {target})
    return [(name, MODULE)]


# --------------------------------------------------------------------------------------------------------------
# The stages' entries


def component_images(tree: Tree) -> dict[str, list[str]]:
    """{image: component functions}, from ``components/stages.py``: a def decorated with
    ``dsl.component(base_image=image_for("X"))``, or ``g = dsl.component(base_image=image_for("X"))(f.python_func)``."""

    def image_of(call: ast.AST) -> str | None:
        if not isinstance(call, ast.Call):
            return None
        for kw in call.keywords:
            value = kw.value
            if (kw.arg == "base_image" and isinstance(value, ast.Call) and dotted(value.func) == ["image_for"]
                    and value.args and isinstance(value.args[0], ast.Constant)):
                return value.args[0].value
        return None

    module = tree.get(COMPONENTS)
    out: dict[str, list[str]] = {}
    for node in module.tree.body:
        if isinstance(node, ast.FunctionDef):
            for deco in node.decorator_list:
                if image_of(deco):
                    out.setdefault(image_of(deco), []).append(node.name)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and image_of(node.value.func):
            for arg in node.value.args:
                chain = dotted(arg)
                if chain and chain[-1] == "python_func":
                    out.setdefault(image_of(node.value.func), []).append(chain[0])
    return out


def cli_command(image: str) -> str:
    """The CLI stage command that runs an image's stage (generate-vllm runs ``generate``)."""
    return image.split("-")[0]


def entries(tree: Tree, image: str) -> list[tuple[str, str]]:
    """What runs in ``image``: its component bodies, the CLI on import and its own stage command."""
    bodies = component_images(tree).get(image, [])
    cli = tree.get(CLI)
    commands = [f"_cmd_{name}" for name in (cli_command(image),) if f"_cmd_{name}" in cli.defs]
    return [(COMPONENTS, BODY + body) for body in bodies] + [(CLI, MODULE)] + [(CLI, cmd) for cmd in commands]


def stage_reach(image: str, tree: Tree | None = None) -> Reach:
    tree = tree or Tree()
    components = tree.get(COMPONENTS)
    executor = Use(KFP_EXECUTOR, (), (COMPONENTS, MODULE), components.shown, 1, False, run=True)
    return reach(tree, entries(tree, image), [executor])


# --------------------------------------------------------------------------------------------------------------
# What each image installs


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def stage_requirements(image: str, pyproject: Path = PYPROJECT) -> list[str]:
    """What the image installs (images/scripts/requirements.py): core dependencies, the extra, the pipeline extra."""
    project = tomllib.loads(Path(pyproject).read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]

    def expand(extra: str) -> list[str]:
        out = []
        for req in extras[extra]:
            own = re.fullmatch(rf"{re.escape(project['name'])}\[([^\]]+)\]", req.strip())
            out += [r for e in own.group(1).split(",") for r in expand(e.strip())] if own else [req]
        return out

    return list(project.get("dependencies", [])) + expand(image) + extras["pipeline"]


@cache
def _requires(dist: str) -> tuple[str, ...]:
    try:
        return tuple(metadata.distribution(dist).requires or ())
    except metadata.PackageNotFoundError:
        return ()


def closure(requirements: Iterable[str]) -> set[str]:
    """The normalized distribution names the requirements install, dependencies of dependencies included."""
    seen: set[tuple[str, frozenset]] = set()
    todo = [Requirement(r) for r in requirements]
    names = set()
    while todo:
        req = todo.pop()
        key = (normalize(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        for text in _requires(req.name):
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append(dep)
    return names


@cache
def _module_distributions() -> dict[str, tuple[str, ...]]:
    return {top: tuple(normalize(d) for d in dists) for top, dists in metadata.packages_distributions().items()}


def distributions_of(top: str) -> tuple[str, ...]:
    """The distributions that install a top-level module (its own name when none here does, e.g. vllm)."""
    return _module_distributions().get(top) or (normalize(top),)


# --------------------------------------------------------------------------------------------------------------
# The check


def missing(image: str, tree: Tree | None = None, pyproject: Path = PYPROJECT,
            optional: Mapping[tuple[str, str, str], str] = OPTIONAL) -> list[str]:
    """One line per use the image would not provide: ``path:line: image IMAGE imports MODULE ...``."""
    result = stage_reach(image, tree)
    installed = closure(stage_requirements(image, pyproject))
    lines = []
    for use in sorted(set(result.uses), key=lambda u: (u.path, u.lineno, u.module)):
        dists = distributions_of(use.top)
        if set(dists) & installed or (image, use.top, use.where) in optional:
            continue
        how = "runs" if use.run else "imports"
        via = " -> ".join(result.chain(use.unit))
        lines.append(f"{use.path}:{use.lineno}: image {image} {how} {use.module} (in {use.qualname}"
                     f"{', guarded by an except that catches ImportError' if use.guarded else ''}; "
                     f"reached by {via}), "
                     f"but no requirement of the {image} extra installs {' or '.join(dists)}: add it to "
                     f"[project.optional-dependencies] {image} in pyproject.toml, or list it in OPTIONAL with why")
    return lines


def probe_statements(image: str, tree: Tree | None = None,
                     optional: Mapping[tuple[str, str, str], str] = OPTIONAL) -> list[str]:
    """The import statements the image must run: every third-party use (the OPTIONAL ones excepted; one
    ``from X import ...`` per module X) and every first-party module the stage reaches."""
    result = stage_reach(image, tree)
    names: dict[str, set[str]] = {}
    for use in result.uses:
        if (image, use.top, use.where) not in optional:
            names.setdefault(use.module, set()).update(use.names)
    third = [f"from {m} import {', '.join(sorted(n))}" if n else f"import {m}" for m, n in sorted(names.items())]
    for module in sorted(m for m, n in names.items() if n and any(u.module == m and not u.names for u in result.uses
                                                                   if (image, u.top, u.where) not in optional)):
        third.append(f"import {module}")
    return third + [f"import {m}" for m in result.modules]


def third_party_modules(image: str, tree: Tree | None = None) -> list[str]:
    """The sorted top-level third-party modules the image's stage reaches (OPTIONAL ones included)."""
    return sorted({u.top for u in stage_reach(image, tree).uses})


if __name__ == "__main__":  # .venv/bin/python tests/image_contents.py: the derived lists, and what is missing
    sys.path.insert(0, str(ROOT / "src"))
    from bakeoff.images import IMAGES

    for image in IMAGES:
        print(f"{image}: {' '.join(third_party_modules(image))}")
        for line in missing(image):
            print(f"  missing: {line}")
