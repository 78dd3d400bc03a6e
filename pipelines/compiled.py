"""The compiled pipelines kept in Git: ``pipelines/compiled/<experiment>.yaml`` for every shipped experiment.

They are what the Kubeflow UI uploads and what GitOps applies (the Helm chart's upload Job takes them
from ``helm/bakeoff/files/pipelines/``). A test compiles every experiment again and fails when a file
differs, so they never drift from the code and the specs.

    python -m bakeoff_pipelines.compiled --write   # make compiled
    python -m bakeoff_pipelines.compiled --check

The specs are compiled as written: relative data paths stay relative (a cluster reads data from
``s3://``; a local path only means something to ``bakeoff run`` on a laptop), and images use the
default registry and the package version (``BAKEOFF_REGISTRY`` / ``BAKEOFF_IMAGE_TAG`` must be unset).
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import yaml

from bakeoff.spec import parse_spec

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
COMPILED = REPO / "pipelines" / "compiled"


def experiments() -> list[Path]:
    return sorted(EXPERIMENTS.glob("*.yaml"))


def compile_text(spec_path: Path) -> str:
    """The compiled YAML of one experiment, as kept under pipelines/compiled/."""
    from bakeoff_pipelines.bakeoff_pipeline import compile_pipeline

    overridden = [v for v in ("BAKEOFF_REGISTRY", "BAKEOFF_IMAGE_TAG") if os.environ.get(v)]
    if overridden:
        raise SystemExit(f"unset {', '.join(overridden)}: pipelines/compiled/ holds the default image references")
    spec = parse_spec(yaml.safe_load(spec_path.read_text(encoding="utf-8")), str(spec_path))
    with tempfile.TemporaryDirectory() as tmp:
        return compile_pipeline(spec, Path(tmp) / "p.yaml").read_text(encoding="utf-8")


def stale() -> list[str]:
    """Experiments whose compiled file is missing or differs, and compiled files with no experiment."""
    out = []
    for path in experiments():
        target = COMPILED / path.name
        if not target.exists() or target.read_text(encoding="utf-8") != compile_text(path):
            out.append(path.name)
    names = {p.name for p in experiments()}
    out += [f"{p.name} (no experiment)" for p in sorted(COMPILED.glob("*.yaml")) if p.name not in names]
    return out


def write() -> list[Path]:
    COMPILED.mkdir(parents=True, exist_ok=True)
    names = {p.name for p in experiments()}
    for orphan in COMPILED.glob("*.yaml"):
        if orphan.name not in names:
            orphan.unlink()
    written = []
    for path in experiments():
        target = COMPILED / path.name
        target.write_text(compile_text(path), encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="keep pipelines/compiled/ in step with experiments/")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true")
    group.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.write:
        for path in write():
            print(f"wrote {path.relative_to(REPO)}")
        return 0
    bad = stale()
    for name in bad:
        print(f"pipelines/compiled/{name} is out of date: make compiled", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
