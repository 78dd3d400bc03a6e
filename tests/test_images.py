"""The stage images: what is inside each, and the whole smoke pipeline run in them through KFP's Docker runner.

Needs the images (``make images``; CI builds them on a Debian base it makes with debootstrap) and a
Docker daemon. Without ``BAKEOFF_DOCKER_TEST=1`` these tests skip; with it (``make test-images``, CI)
a missing daemon or image fails them.

What each image must import is derived from the code (tests/image_contents.py; tests/test_image_contents.py
checks the same list against pyproject.toml's extras without Docker): here each built image imports it.

The containers run the way the Helm chart's pods do: non-root, read-only root filesystem with tmpfs
scratch, every capability dropped, no privilege escalation, and without any network, except the pipeline
run, which reaches the judge stand-in on the host's loopback (host network, that test only).
"""

# No `from __future__ import annotations`: KFP reads the test pipeline's annotations at runtime.

import builtins
import json
import os
import re
import stat
import time
from importlib.metadata import version
from pathlib import Path

import image_contents
import pytest
import yaml
from conftest import ROOT
from judge_stub import serve

from bakeoff import __version__
from bakeoff.images import STAGES, image_for

REQUIRED = os.environ.get("BAKEOFF_DOCKER_TEST") == "1"
pytestmark = pytest.mark.skipif(not REQUIRED, reason="set BAKEOFF_DOCKER_TEST=1 after `make images` "
                                "(make test-images) to run stages in their containers")

HARDENED = {"read_only": True, "tmpfs": {"/tmp": "mode=1777", "/home/bakeoff": "uid=10001,gid=10001,mode=0755"},
            "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "network_mode": "none"}


@pytest.fixture(scope="module")
def docker_client():
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # docker.errors.DockerException and socket errors
        pytest.fail(f"BAKEOFF_DOCKER_TEST=1 but no Docker daemon answers: {exc}")
    yield client
    client.close()


@pytest.mark.parametrize("stage", STAGES)
def test_image_has_its_stage_non_root_and_the_pipelines_kfp(docker_client, stage):
    image = image_for(stage)
    try:
        docker_client.images.get(image)
    except Exception:
        pytest.fail(f"{image} is not built: make images (REGISTRY and TAG as BAKEOFF_REGISTRY, BAKEOFF_IMAGE_TAG)")
    # every import the stage's code can run (derived, not listed by hand), each tried, the failures reported
    statements = image_contents.probe_statements(stage)
    probe = ("import importlib.metadata as m, json, os, traceback\nfailed = {}\n"
             f"for s in {statements!r}:\n"
             "    try:\n        exec(s, {})\n"
             "    except BaseException as e:\n        failed[s] = traceback.format_exception_only(e)[-1].strip()\n"
             "print(json.dumps({'uid': os.getuid(), 'kfp': m.version('kfp'), 'bakeoff': m.version('bakeoff'), "
             "'failed': failed}))")
    out = docker_client.containers.run(image, ["python", "-c", probe], remove=True, **HARDENED)
    facts = json.loads(out.decode().strip().splitlines()[-1])
    assert facts == {"uid": 10001, "kfp": version("kfp"), "bakeoff": __version__, "failed": {}}


# The smoke bake-off, smaller: two tiny arms, every variant, exact match and the judge.
SPLIT = {"train": 96, "validation": 16, "test": 16}
TRAINING = {"max_steps": 12, "eval_steps": 6, "logging_steps": 6, "batch_size": 8}


def smoke_spec(data_file: Path, judge_url: str):
    from bakeoff.spec import parse_spec

    spec = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    spec["data"]["sources"] = [{"uri": str(data_file), "format": "alpaca"}]
    spec["data"]["split"] = SPLIT
    spec["training"].update(TRAINING)
    spec["evaluation"]["metrics"] = ["exact_match", "judge"]
    spec["evaluation"]["judge"] = {"base_url": judge_url, "model": "grader"}
    # no GPU asked: generate runs in the plain generate image (with a GPU it would be generate-vllm's)
    spec["resources"] = {"finetune": {"gpu": None}, "generate": {"gpu": None}}
    return parse_spec(spec)


def test_smoke_pipeline_runs_every_stage_in_its_image_with_the_judge(docker_client, tmp_path, capfd):
    """All five stages through KFP's Docker runner, each in its own image, the judge on loopback."""
    from bakeoff_pipelines import build_pipeline
    from kfp import local

    root = tmp_path / "kfp"
    root.mkdir()
    # the containers' user (10001) writes the outputs into the bind-mounted pipeline root
    for path in (tmp_path, root):
        path.chmod(path.stat().st_mode | stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO)
    data_file = root / "smoke.jsonl"
    data_file.write_bytes((ROOT / "experiments" / "data" / "smoke.jsonl").read_bytes())
    data_file.chmod(0o644)
    # host network: the containers reach the judge on the host's 127.0.0.1; one torch thread per task (the
    # arms' tasks run at the same time, as run_local shares the cores out)
    runner = local.DockerRunner(**{**HARDENED, "network_mode": "host"}, environment={"OMP_NUM_THREADS": "1"})
    original_print = builtins.print  # kfp.local swaps print to indent task logs (see run_local)
    started = time.perf_counter()
    try:
        with serve("grade") as judge:
            spec = smoke_spec(data_file, judge.base_url)
            local.init(runner=runner, pipeline_root=str(root), raise_on_error=True)
            task = build_pipeline(spec, local=True)()
            calls = judge.requests
    finally:
        builtins.print = original_print
    seconds = time.perf_counter() - started
    log = capfd.readouterr().out
    with capfd.disabled():
        print(f"\nsmoke pipeline in the stage images: {seconds:.0f} s")

    # every stage ran in its own image (the Docker runner names the image it starts)
    started_images = set(re.findall(r"Found image '([^']+)'", log))
    assert started_images == {image_for(stage) for stage in STAGES}
    results = json.loads(Path(task.outputs["results"].path).read_text())
    arms = [arm.name for arm in spec.arms]
    assert list(results["training"]) == arms
    test_rows = SPLIT["test"]
    for arm in arms:
        assert results["training"][arm]["steps"] == TRAINING["max_steps"]
        assert results["health"][arm]["adapter_applied"] is True
        assert results["health"][arm]["judge"]["parse_failures"] == 0
        for variant in spec.variants:
            row = next(r for r in results["rows"] if r["arm"] == arm and r["variant"] == variant)
            for metric in ("exact_match", "judge"):
                cell = row["metrics"][metric]
                assert cell["n"] == test_rows and cell["failures"] == 0 and cell["mean"] is not None, \
                    (arm, variant, metric, cell)
            assert 1 <= row["metrics"]["judge"]["mean"] <= 10
    # 2 arms x 3 variants x 16 answers judged (equal answers to one question share a cached call), and the
    # prepare and generate preflights
    assert 0 < calls <= len(arms) * len(spec.variants) * test_rows + 3
    html = Path(task.outputs["html"].path).read_text()
    for needle in (*arms, "fine-tuned", "base-zero-shot", "base-few-shot", "exact_match", "judge", "<svg"):
        assert needle in html
    markdown = Path(task.outputs["markdown"].path).read_text()
    assert f"| {arms[0]} | fine-tuned |" in markdown
    # what the containers wrote belongs to their non-root user
    models = sorted(root.glob("*/for-loop-*/finetune/model"))
    assert len(models) == len(arms)
    for model in models:
        assert (model / "training.json").stat().st_uid == 10001
        assert (model / "adapter" / "adapter_model.safetensors").is_file()
