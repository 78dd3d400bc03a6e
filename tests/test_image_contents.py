"""Each stage image installs every module its stage's code can import at run time.

The modules are derived from the code (tests/image_contents.py: the component body, the CLI, and what they reach,
traced per function with ``ast``), not listed by hand: a new import in a stage's code without its distribution in
that stage's extra in pyproject.toml fails here, without Docker. tests/test_images.py imports the same derived list
inside each built image.
"""

from __future__ import annotations

import ast
import functools
import shutil
from pathlib import Path

import image_contents as ic
import pytest
import tomllib

from bakeoff.images import IMAGES, STAGES

# each image's stage package: the only one of the five it may reach (they are siblings, bakeoff.stages imports
# each inside its run_* function)
STAGE_PACKAGES = {"prepare": "bakeoff.data", "finetune": "bakeoff.train", "generate": "bakeoff.generate",
                  "generate-vllm": "bakeoff.generate", "evaluate": "bakeoff.evaluate", "report": "bakeoff.report"}


@pytest.fixture(scope="module")
def tree() -> ic.Tree:
    return ic.Tree()


def test_every_image_has_its_component(tree):
    assert set(ic.component_images(tree)) == set(IMAGES)
    assert set(STAGE_PACKAGES) == set(IMAGES) and set(STAGES) <= set(IMAGES)


@pytest.mark.parametrize("image", IMAGES)
def test_image_extra_installs_every_module_its_stage_imports(tree, image):
    lines = ic.missing(image, tree)
    assert not lines, f"{len(lines)} module(s) the {image} stage imports are not installed in its image:\n" + \
        "\n".join(f"  {line}" for line in lines)


@pytest.mark.parametrize("image", IMAGES)
def test_stage_reaches_its_own_stage_package_and_no_other(tree, image):
    """Guard against a tracer that reaches too little (passing by checking nothing) or too much."""
    reached = ic.stage_reach(image, tree).modules
    packages = {p for p in STAGE_PACKAGES.values() if any(m == p or m.startswith(p + ".") for m in reached)}
    assert packages == {STAGE_PACKAGES[image]}
    assert "bakeoff.stages" in reached and "bakeoff.cli" in reached


# a library each stage needs (through function-level imports), and one it must not reach
EXPECTED = {"prepare": ("datasets", "torch"), "finetune": ("trl", "ragas"), "generate": ("peft", "datasets"),
            "generate-vllm": ("vllm", "trl"), "evaluate": ("ragas", "torch"), "report": ("matplotlib", "openai")}


@pytest.mark.parametrize("image", IMAGES)
def test_derived_modules_are_plausible(tree, image):
    needed, not_needed = EXPECTED[image]
    required = {u.top for u in ic.stage_reach(image, tree).uses if (image, u.top, u.where) not in ic.OPTIONAL}
    assert needed in required and not_needed not in required
    assert "kfp" in required  # the executor every component body runs under


def test_optional_entries_are_current(tree):
    """Each OPTIONAL entry still names a use its image reaches and does not install (else: remove it)."""
    stale = []
    for (image, top, where), _ in ic.OPTIONAL.items():
        installed = ic.closure(ic.stage_requirements(image))
        uses = [u for u in ic.stage_reach(image, tree).uses if u.top == top and u.where == where]
        if not uses or set(ic.distributions_of(top)) & installed:
            stale.append(f"OPTIONAL[{image!r}, {top!r}, {where!r}]")
    assert not stale, "stale entries (no longer reached, or now installed): remove them: " + ", ".join(stale)


def test_probe_statements_compile(tree):
    for image in IMAGES:
        statements = ic.probe_statements(image, tree)
        assert "import kfp.dsl.executor_main" in statements and "import bakeoff.cli" in statements
        for statement in statements:
            compile(statement, "<probe>", "exec")


# --------------------------------------------------------------------------------------------------------------
# Planted trees: the check catches a new import without its distribution


@pytest.fixture
def copy(tmp_path) -> Path:
    """The first-party tree copied under tmp_path (src/bakeoff, components, pipelines) and pyproject.toml."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "compiled")
    for rel in ("src/bakeoff", "components", "pipelines"):
        shutil.copytree(ic.ROOT / rel, tmp_path / rel, ignore=ignore)
    shutil.copyfile(ic.PYPROJECT, tmp_path / "pyproject.toml")
    return tmp_path


@functools.cache  # each test plants first, then reads the tree
def planted_tree(root: Path) -> ic.Tree:
    return ic.Tree({"bakeoff": root / "src" / "bakeoff", "bakeoff_components": root / "components",
                    "bakeoff_pipelines": root / "pipelines"}, shown_base=root)


def plant(root: Path, rel: str, function: str, lines: list[str]) -> int:
    """Insert ``lines`` at the top of ``function``'s body (a top-level def, or Class.method) in ``rel``; returns
    the line number of the first one."""
    path = root / rel
    text = path.read_text(encoding="utf-8")
    node = ast.parse(text)
    for part in function.split("."):
        node = next(n for n in node.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part)
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):  # after the docstring
        first = node.body[1]
    indent = " " * first.col_offset
    source = text.splitlines(keepends=True)
    at = first.lineno - 1
    source[at:at] = [f"{indent}{line}\n" for line in lines]
    path.write_text("".join(source), encoding="utf-8")
    return first.lineno


def reported(root: Path, image: str) -> list[str]:
    return ic.missing(image, planted_tree(root), pyproject=root / "pyproject.toml")


def test_planted_copy_is_clean(copy):
    for image in IMAGES:
        assert reported(copy, image) == []


def test_new_function_level_import_is_reported_with_file_line_module_and_stage(copy):
    line = plant(copy, "src/bakeoff/report/render.py", "render_html", ["import undeclared_pkg"])
    lines = reported(copy, "report")
    assert len(lines) == 1
    assert lines[0].startswith(f"src/bakeoff/report/render.py:{line}: image report imports undeclared_pkg "
                               "(in render_html; reached by bakeoff")
    assert "-> bakeoff.report.render.render_html), but no requirement of the report extra installs undeclared-pkg" \
        in lines[0]
    assert "[project.optional-dependencies] report in pyproject.toml" in lines[0]
    # the other stages never reach the report package
    assert all(reported(copy, image) == [] for image in ("prepare", "finetune", "generate", "evaluate"))


def test_import_in_one_run_function_is_reported_for_that_stage_only(copy):
    line = plant(copy, "src/bakeoff/stages.py", "run_finetune", ["from undeclared_pkg.sub import thing"])
    lines = reported(copy, "finetune")
    assert [x.split(" (")[0] for x in lines] == [f"src/bakeoff/stages.py:{line}: image finetune imports "
                                                 "undeclared_pkg.sub"]
    for image in ("prepare", "generate", "evaluate", "report"):
        assert reported(copy, image) == []


def test_import_reached_through_a_new_module_and_a_method_is_reported(copy):
    (copy / "src/bakeoff/evaluate/extra.py").write_text(
        '"""A planted module."""\n\n\nclass Scorer:\n    def score(self):\n        import undeclared_pkg\n\n'
        "        return undeclared_pkg\n", encoding="utf-8")
    plant(copy, "src/bakeoff/evaluate/evaluate.py", "evaluate", ["from bakeoff.evaluate.extra import Scorer",
                                                                 "Scorer().score()"])
    lines = reported(copy, "evaluate")
    assert len(lines) == 1 and lines[0].startswith("src/bakeoff/evaluate/extra.py:6: image evaluate imports "
                                                   "undeclared_pkg (in Scorer; reached by ")
    assert "bakeoff.evaluate.evaluate.evaluate -> bakeoff.evaluate.extra.Scorer" in lines[0]


def test_module_level_import_of_a_shared_module_is_reported_for_every_stage(copy):
    (copy / "src/bakeoff/errors.py").write_text((copy / "src/bakeoff/errors.py").read_text() + "\nimport torch\n")
    assert reported(copy, "finetune") == [] and reported(copy, "generate") == []
    for image in ("prepare", "evaluate", "report"):
        assert any(f"image {image} imports torch" in x for x in reported(copy, image)), image


def test_guarded_import_is_reported_unless_listed_as_optional(copy):
    line = plant(copy, "src/bakeoff/report/render.py", "render_html",
                 ["try:", "    import undeclared_pkg", "except ImportError:", "    undeclared_pkg = None"])
    lines = reported(copy, "report")
    assert len(lines) == 1
    assert lines[0].startswith(f"src/bakeoff/report/render.py:{line + 1}: image report imports undeclared_pkg "
                               "(in render_html, guarded by an except that catches ImportError;")
    optional = {("report", "undeclared_pkg", "src/bakeoff/report/render.py::render_html"): "planted"}
    assert ic.missing("report", planted_tree(copy), copy / "pyproject.toml", optional) == []


def test_module_run_with_dash_m_is_reported(copy):
    plant(copy, "src/bakeoff/report/render.py", "render_html",
          ["import subprocess, sys", 'subprocess.run([sys.executable, "-m", "undeclared_tool.cli"])'])
    assert any("image report runs undeclared_tool.cli" in x for x in reported(copy, "report"))


def test_dependency_of_a_declared_requirement_counts_and_a_removed_requirement_is_reported(copy):
    plant(copy, "src/bakeoff/report/render.py", "render_html", ["import markupsafe"])  # jinja2 requires it
    assert reported(copy, "report") == []
    pyproject = copy / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    kept = [r for r in extras["report"] if not r.startswith("jinja2")]
    pyproject.write_text(pyproject.read_text().replace(f"report = {extras['report']!r}".replace("'", '"'),
                                                       f"report = {kept!r}".replace("'", '"')))
    assert tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["report"] == kept
    lines = reported(copy, "report")
    assert any(" imports jinja2 " in x for x in lines) and any(" imports markupsafe " in x for x in lines)
