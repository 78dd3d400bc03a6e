"""Print one stage's requirements from pyproject.toml: the core dependencies, the stage's extra and the
pipeline extra (kfp at the exact version the pipeline is compiled with).

Used by the image builds so that dependencies install in a layer of their own, before the source is
copied: a code change then rebuilds only the last, small layer.

    python requirements.py PYPROJECT STAGE [--pin torch==2.13.0 ...]
"""

import argparse
import re
import sys
import tomllib


def requirements(pyproject: str, stage: str, pins: list[str]) -> list[str]:
    with open(pyproject, "rb") as fh:
        project = tomllib.load(fh)["project"]
    extras = project["optional-dependencies"]
    if stage not in extras:
        sys.exit(f"no extra {stage!r} in {pyproject}; extras: {', '.join(sorted(extras))}")
    wanted = list(project.get("dependencies", [])) + expand(extras, stage, project["name"]) + extras["pipeline"]
    pinned = {re.split(r"[<>=!~\[ ;]", pin, maxsplit=1)[0].lower(): pin for pin in pins}
    out = []
    for req in wanted:
        name = re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0].lower()
        out.append(pinned.pop(name, req))
    return out


def expand(extras: dict, extra: str, name: str) -> list[str]:
    """An extra's requirements, with the package's own extras it names (``bakeoff[generate]``) expanded."""
    out = []
    for req in extras[extra]:
        own = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", req.strip())
        out += [r for e in own.group(1).split(",") for r in expand(extras, e.strip(), name)] if own else [req]
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject")
    parser.add_argument("stage")
    parser.add_argument("--pin", action="append", default=[], help="replace a requirement by this exact one")
    args = parser.parse_args()
    print("\n".join(requirements(args.pyproject, args.stage, [p for p in args.pin if p])))
