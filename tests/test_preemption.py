"""A finetune killed mid-run resumes from its newest complete checkpoint, locally and on S3 (each
training's checkpoints live under ``<checkpoint_uri>/<experiment>/<arm>/fp-<fingerprint>/``)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import ROOT

from bakeoff.data.prepare import prepare_data
from bakeoff.spec import parse_spec
from bakeoff.train.checkpoints import MARKER

pytest_plugins = ["s3_fixture"]
MAX_STEPS = 120


def write_spec(tmp_path: Path, checkpoint_uri: str) -> Path:
    data = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    data["data"]["sources"] = [{"uri": str(ROOT / "experiments" / "data" / "smoke.jsonl")}]
    data["data"]["split"] = {"train": 64, "validation": 8, "test": 8}
    data["training"].update(max_steps=MAX_STEPS, logging_steps=5, eval_steps=10, batch_size=4,
                            checkpoint_uri=checkpoint_uri)
    spec = parse_spec(data)
    prepare_data(spec.data, spec.seed, tmp_path / "data")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return path


def start(spec: Path, tmp_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bakeoff.cli", "finetune", str(spec), "--arm", "tiny-llama",
           "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"finetune ended early:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no complete checkpoint in time"
        time.sleep(0.05)


def finish(spec: Path, tmp_path: Path) -> dict:
    proc = start(spec, tmp_path)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    return json.loads((tmp_path / "out" / "training.json").read_text())


def local_complete(root: Path, step: int) -> bool:
    return any(root.glob(f"fp-*/checkpoint-{step}/{MARKER}"))


def test_sigkill_then_resume_from_a_local_checkpoint(tmp_path, cache_env):
    ckpt = tmp_path / "ckpt"
    spec = write_spec(tmp_path, str(ckpt))
    proc = start(spec, tmp_path)
    wait_for(lambda: local_complete(ckpt / "smoke" / "tiny-llama", 20), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    record = finish(spec, tmp_path)
    assert record["steps"] == MAX_STEPS  # what an uninterrupted run does
    assert record["resumed_from_step"] >= 20 and record["resumed_from_step"] % 10 == 0
    assert record["loss_history"]["resumed_at"] == [{"step": record["resumed_from_step"]}]
    train_steps = [p["step"] for p in record["loss_history"]["train"]]
    assert train_steps == list(range(5, MAX_STEPS + 1, 5))  # the history before the kill survived the resume


def test_sigkill_then_resume_from_s3(tmp_path, cache_env, s3):
    spec = write_spec(tmp_path, f"s3://{s3.bucket}/ckpt")

    def on_s3(step: int) -> bool:
        names = {o.object_name for o in s3.client.list_objects(s3.bucket, prefix="ckpt/", recursive=True)}
        return any(re.fullmatch(rf"ckpt/smoke/tiny-llama/fp-[0-9a-f]{{16}}/checkpoint-{step}/{MARKER}", n)
                   for n in names)

    proc = start(spec, tmp_path)
    wait_for(lambda: on_s3(20), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # A new pod starts with nothing local: only what reached S3 counts.
    for leftover in (tmp_path / "out").glob("checkpoints"):
        shutil.rmtree(leftover)
    record = finish(spec, tmp_path)
    assert record["steps"] == MAX_STEPS and record["resumed_from_step"] >= 20


def test_sigterm_saves_a_checkpoint_and_exits_for_a_retry(tmp_path, cache_env):
    ckpt = tmp_path / "ckpt"
    spec = write_spec(tmp_path, str(ckpt))
    root = ckpt / "smoke" / "tiny-llama"
    proc = start(spec, tmp_path)
    wait_for(lambda: local_complete(root, 10), proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, output
    stopped = int(re.search(r"stopped by SIGTERM at step (\d+)", output).group(1))
    assert stopped >= 10 and local_complete(root, stopped)  # saved where it stopped, not at the last cadence
    record = finish(spec, tmp_path)
    assert record["steps"] == MAX_STEPS and record["resumed_from_step"] == stopped


def test_two_processes_train_data_parallel_and_rank_0_writes(tmp_path, cache_env):
    from bakeoff.cli import main

    spec = write_spec(tmp_path, str(tmp_path / "ckpt"))
    data = yaml.safe_load(spec.read_text())
    data["training"].update(max_steps=8, eval_steps=4)
    spec.write_text(yaml.safe_dump(data))
    assert main(["finetune", str(spec), "--arm", "tiny-llama", "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "out"), "--processes", "2"]) == 0
    record = json.loads((tmp_path / "out" / "training.json").read_text())
    assert record["world_size"] == 2 and record["steps"] == 8
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
