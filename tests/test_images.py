"""The stage images: what is inside each, and pipeline stages run in their containers through KFP's Docker runner.

Needs the images (``make images``; CI builds them on a Debian base it makes with debootstrap) and a
Docker daemon. Without ``BAKEOFF_DOCKER_TEST=1`` these tests skip; with it (``make test-images``, CI)
a missing daemon or image fails them.

The containers run the way the Helm chart's pods do: non-root, read-only root filesystem with tmpfs
scratch, every capability dropped, no privilege escalation, and here without any network.
"""

# No `from __future__ import annotations`: KFP reads the test pipeline's annotations at runtime.

import json
import os
import stat
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from bakeoff import __version__
from bakeoff.images import STAGES, image_for

REQUIRED = os.environ.get("BAKEOFF_DOCKER_TEST") == "1"
pytestmark = pytest.mark.skipif(not REQUIRED, reason="set BAKEOFF_DOCKER_TEST=1 after `make images` "
                                "(make test-images) to run stages in their containers")

# What each stage's image must be able to import (its extra), beside kfp and bakeoff.
# What each stage's image must import: its libraries, and the endpoint client where the stage talks to an
# OpenAI-compatible API (the judge preflight, the hosted arm, the generation endpoint).
MODULES = {"prepare": ["datasets", "transformers", "minio", "openai", "tenacity", "bakeoff.stages",
                       "bakeoff.endpoints"],
           "finetune": ["torch", "transformers", "peft", "trl", "trl.data_utils", "accelerate", "bitsandbytes",
                        "kubernetes", "openai", "tenacity", "bakeoff.train.worker", "bakeoff.train.hosted"],
           "generate": ["torch", "transformers", "peft", "openai", "tenacity", "bakeoff.generate.backends"],
           "evaluate": ["openai", "ragas", "numpy", "tenacity", "bakeoff.evaluate.ragas_metrics"],
           "report": ["jinja2", "matplotlib", "bakeoff.report.render"]}
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
    probe = ("import importlib, importlib.metadata as m, json, os; "
             f"[importlib.import_module(n) for n in {MODULES[stage] + ['bakeoff.cli', 'kfp.dsl.executor_main']!r}]; "
             "print(json.dumps({'uid': os.getuid(), 'kfp': m.version('kfp'), 'bakeoff': m.version('bakeoff')}))")
    out = docker_client.containers.run(image, ["python", "-c", probe], remove=True, **HARDENED)
    facts = json.loads(out.decode().strip().splitlines()[-1])
    assert facts == {"uid": 10001, "kfp": version("kfp"), "bakeoff": __version__}


def test_prepare_and_finetune_run_in_their_containers(docker_client, tmp_path, monkeypatch):
    from bakeoff_components import finetune, prepare_data
    from kfp import dsl, local

    from bakeoff.spec import parse_spec

    root = tmp_path / "kfp"
    root.mkdir()
    # the containers' user (10001) writes the outputs into the bind-mounted pipeline root
    for path in (tmp_path, root):
        path.chmod(path.stat().st_mode | stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO)
    data_file = root / "smoke.jsonl"
    data_file.write_bytes((ROOT / "experiments" / "data" / "smoke.jsonl").read_bytes())
    data_file.chmod(0o644)
    spec_data = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    spec_data["data"]["sources"] = [{"uri": str(data_file), "format": "alpaca"}]
    spec_data["data"]["split"] = {"train": 64, "validation": 8, "test": 8}
    spec_data["training"].update(max_steps=6, eval_steps=3, logging_steps=3, batch_size=4)
    spec_data["evaluation"]["metrics"] = ["exact_match"]
    spec = parse_spec(spec_data)

    @dsl.pipeline(name="stages-in-containers")
    def two_stages(spec_json: str) -> dsl.Model:
        prep = prepare_data(spec_json=spec_json)
        return finetune(spec_json=spec_json, arm="tiny-llama", data=prep.outputs["data"]).outputs["model"]

    local.init(runner=local.DockerRunner(**HARDENED), pipeline_root=str(root), raise_on_error=True)
    run = two_stages(spec_json=spec.to_json())

    prepared = next(root.glob("*/prepare-data/data"))
    rows = {split: sum(1 for _ in (prepared / f"{split}.jsonl").open()) for split in ("train", "validation", "test")}
    assert rows == {"train": 64, "validation": 8, "test": 8}
    assert json.loads((prepared / "stats.json").read_text())["rows"]["train"] == 64
    model = Path(run.output.path)
    record = json.loads((model / "training.json").read_text())
    assert record["steps"] == 6 and record["best_validation_loss"] > 0
    assert (model / "adapter" / "adapter_model.safetensors").is_file()
    # what the container wrote belongs to its non-root user
    assert (model / "training.json").stat().st_uid == 10001
