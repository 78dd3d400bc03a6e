"""A local run behaves like a tool: Ctrl-C (or SIGTERM) stops every task within seconds, training saves a
checkpoint, nothing is retried, one line says what was saved and how to resume, the exit status is 130, no
task process outlives the runner (even a SIGKILLed one); a failing task is not retried either, and the run's
last line is that task's own error."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from bakeoff_pipelines import bakeoff_pipeline
from bakeoff_pipelines.bakeoff_pipeline import LocalTaskFailed, LocalTasks, RunInterrupted, build_pipeline, task_name
from conftest import ROOT

from bakeoff.errors import SpecError
from bakeoff.stages import ERROR_FILE_ENV, run_evaluate

# --- the local pipeline has no retries -------------------------------------------------------------------


def test_the_local_pipeline_has_no_retry_policy_and_the_cluster_one_keeps_it(smoke_spec, tmp_path):
    from kfp import compiler

    for local, path in ((True, tmp_path / "local.yaml"), (False, tmp_path / "cluster.yaml")):
        compiler.Compiler().compile(build_pipeline(smoke_spec, local=local), package_path=str(path))
    assert "retryPolicy" not in (tmp_path / "local.yaml").read_text()
    assert "retryPolicy" in (tmp_path / "cluster.yaml").read_text()


# --- a stage under the local runner: its typed error in a file, no traceback -----------------------------


def test_a_stage_under_the_local_runner_writes_its_error_and_exits_with_its_status(smoke_spec, tmp_path, monkeypatch):
    with pytest.raises(SpecError):  # outside the local runner: the error itself, for the CLI to show
        run_evaluate(smoke_spec, "no-such-arm", tmp_path, tmp_path / "out")
    error_file = tmp_path / "error.json"
    monkeypatch.setenv(ERROR_FILE_ENV, str(error_file))
    with pytest.raises(SystemExit) as exited:
        run_evaluate(smoke_spec, "no-such-arm", tmp_path, tmp_path / "out")
    assert exited.value.code == 2  # an invalid spec, as the CLI says it
    record = json.loads(error_file.read_text())
    assert record["type"] == "SpecError" and "no-such-arm" in record["message"]


# --- LocalTasks with stand-in task processes --------------------------------------------------------------

# A stand-in training task: on SIGTERM it "saves" (writes its error file as a stopped training does) and exits 1.
TRAINING = """import json, os, signal, sys, time
def stop(signum, frame):
    saved = {"arm": sys.argv[1], "step": 7, "checkpoint": "/ckpt/" + sys.argv[1], "kept": True}
    with open(os.environ["BAKEOFF_ERROR_FILE"], "w") as f:
        json.dump({"type": "Preempted", "message": "stopped", "saved": saved}, f)
    sys.exit(1)
signal.signal(signal.SIGTERM, stop)
print("training", flush=True)
time.sleep(120)
"""
FAILING = """import json, os, sys, time
time.sleep(float(sys.argv[1]))
with open(os.environ["BAKEOFF_ERROR_FILE"], "w") as f:
    json.dump({"type": "DataError", "message": "rows.jsonl:3: field 'output' is missing"}, f)
sys.exit(1)
"""
STUBBORN = """import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGTERM", flush=True)
time.sleep(120)
"""


def command(script: str, *args: str, function: str = "finetune", arm: str = "a") -> list[str]:
    executor_input = json.dumps({"inputs": {"parameterValues": {"arm": arm}}})
    return [sys.executable, "-c", script, *args, "--executor_input", executor_input, "--function_to_execute", function]


def start(tasks: LocalTasks, cmd: list[str]) -> tuple[threading.Thread, dict]:
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(code=tasks.run(cmd)), daemon=True)
    thread.start()
    return thread, result


def wait_running(tasks: LocalTasks, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(tasks.running) < n:
        assert time.monotonic() < deadline, "the stand-in tasks did not start"
        time.sleep(0.05)
    time.sleep(0.5)  # their signal handlers are installed


def test_task_names_come_from_the_component_command_line():
    assert task_name(command("pass", function="prepare_data", arm="")) == "prepare-data"
    assert task_name(command("pass", function="finetune", arm="tiny-llama")) == "finetune (arm tiny-llama)"
    assert task_name(["sh", "-c", "true"]) == "task"


def test_stop_ends_every_task_quickly_starts_no_new_one_and_reports_what_was_saved(tmp_path):
    tasks = LocalTasks(tmp_path)
    try:
        threads = [start(tasks, command(TRAINING, arm, arm=arm)) for arm in ("a", "b")]
        wait_running(tasks, 2)
        began = time.monotonic()
        tasks.stop("SIGINT")
        for thread, _ in threads:
            thread.join(timeout=10)
        assert time.monotonic() - began < 5 and not tasks.running
        assert all(result["code"] == 1 for _, result in threads)
        assert tasks.run(command(TRAINING, "c", arm="c")) == 1  # refused: the run is stopping
        outcome = tasks.outcome(RuntimeError("Inner task failed: 'finetune'"))
        assert isinstance(outcome, RunInterrupted) and sorted(s["arm"] for s in outcome.saved) == ["a", "b"]
        line = outcome.summary("bakeoff run spec.yaml")
        assert line.startswith("interrupted (SIGINT): saved checkpoints of ") and "\n" not in line
        assert "a at step 7 (/ckpt/a)" in line and line.endswith("rerun `bakeoff run spec.yaml` to resume")
    finally:
        tasks.close()


def test_a_task_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path, monkeypatch):
    monkeypatch.setattr(bakeoff_pipeline, "STOP_GRACE_S", 0.5)
    tasks = LocalTasks(tmp_path)
    try:
        thread, result = start(tasks, command(STUBBORN))
        wait_running(tasks, 1)
        tasks.stop("SIGTERM")
        thread.join(timeout=10)
        assert not thread.is_alive() and result["code"] == -signal.SIGKILL
    finally:
        tasks.close()


def test_the_first_failing_task_stops_the_others_and_its_error_is_the_outcome(tmp_path):
    tasks = LocalTasks(tmp_path)
    try:
        training, _ = start(tasks, command(TRAINING, "a", arm="a"))
        wait_running(tasks, 1)
        assert tasks.run(command(FAILING, "0", arm="b")) == 1
        training.join(timeout=10)
        assert not training.is_alive()  # stopped, not left to train to the end
        outcome = tasks.outcome(RuntimeError("Inner task failed: 'finetune'"))
        assert isinstance(outcome, LocalTaskFailed)
        assert str(outcome) == "finetune (arm b) failed: rows.jsonl:3: field 'output' is missing"
    finally:
        tasks.close()


def test_a_task_without_a_typed_error_is_named_with_its_status_and_last_line(tmp_path):
    tasks = LocalTasks(tmp_path)
    try:
        assert tasks.run(command("print('boom: it broke'); raise SystemExit(3)", function="report", arm="")) == 3
        assert str(tasks.outcome(RuntimeError())) == "report failed: exit 3: boom: it broke (its log above has the " \
            "traceback)"
    finally:
        tasks.close()


# --- `bakeoff run` itself ---------------------------------------------------------------------------------


def run_spec(tmp_path: Path, max_steps: int = 200, **evaluation) -> Path:
    """The smoke bake-off, small: 64 / 8 / 8 rows, both arms, checkpoints every 10 steps under tmp_path/ckpt."""
    data = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    data["data"]["sources"] = [{"uri": str(ROOT / "experiments" / "data" / "smoke.jsonl")}]
    data["data"]["split"] = {"train": 64, "validation": 8, "test": 8}
    data["training"].update(max_steps=max_steps, logging_steps=5, eval_steps=10, batch_size=4,
                            checkpoint_uri=str(tmp_path / "ckpt"))
    data["variants"] = ["fine-tuned", "base-zero-shot"]
    data["evaluation"].update({"metrics": ["exact_match"], **evaluation})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def bakeoff_run(spec: Path, out: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    """``bakeoff run`` in a process group of its own (as a shell starts a job), its output to ``log``."""
    with open(log, "w") as stream:
        return subprocess.Popen([sys.executable, "-m", "bakeoff.cli", "run", str(spec), "--out", str(out)],
                                stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})


def wait_training(proc: subprocess.Popen, ckpt: Path, log: Path, timeout: float = 300) -> None:
    """Until both arms have a complete checkpoint (both are training)."""
    deadline = time.monotonic() + timeout
    while len({p.parts[-4] for p in ckpt.glob("smoke/*/fp-*/checkpoint-*/COMPLETE")}) < 2:
        assert proc.poll() is None, f"bakeoff run ended early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint of both arms in time"
        time.sleep(0.05)


def run_processes(out: Path, pgid: int) -> list[str]:
    """Live processes of a run: in the runner's process group, or with its output folder on their command line
    (every task's does: its executor input names its artifacts)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state, _, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if state != "Z" and (str(out) in cmdline or int(group) == pgid):
            found.append(f"{entry.name}: {cmdline[:160]}")
    return found


def wait_gone(out: Path, pgid: int, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := run_processes(out, pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_a_missing_judge_key_fails_prepare_once_with_its_message_as_the_last_line(tmp_path, cache_env):
    judge = {"base_url": "https://judge.invalid/v1", "model": "judge", "api_key_env": "BAKEOFF_TEST_NO_SUCH_KEY"}
    spec = run_spec(tmp_path, metrics=["exact_match", "judge"], judge=judge)
    env = {k: v for k, v in os.environ.items() if k != "BAKEOFF_TEST_NO_SUCH_KEY"}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "bakeoff.cli", "run", str(spec), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert time.monotonic() - began < 120  # once, not three times over minutes
    assert done.stderr.strip().splitlines()[-1] == (
        "error: prepare-data failed: evaluation.judge at https://judge.invalid/v1 needs an API key: set "
        "BAKEOFF_TEST_NO_SUCH_KEY (on Kubernetes: evaluation.judge.api_key_secret)")
    assert "Retrying" not in output and "Traceback" not in output and output.count("Executing task") == 1


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")


@pytest.mark.e2e
@needs_proc
def test_ctrl_c_stops_the_run_saves_checkpoints_exits_130_and_a_rerun_resumes(tmp_path, cache_env):
    spec, out, log = run_spec(tmp_path), tmp_path / "out", tmp_path / "run.log"
    proc = bakeoff_run(spec, out, log)
    try:
        wait_training(proc, tmp_path / "ckpt", log)
        began = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the foreground job's group
        code = proc.wait(timeout=60)
        stopped_in = time.monotonic() - began
        left = wait_gone(out, proc.pid, 5)
    finally:
        with_kill(proc)
    output = log.read_text()
    assert code == 130, output[-3000:]
    assert stopped_in < 15, f"took {stopped_in:.1f} s to stop"
    assert not left, left
    assert "Retrying" not in output and "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith("interrupted (SIGINT): saved checkpoints of ")
    assert last.endswith(f"rerun `bakeoff run {spec} --out {out}` to resume")
    saved = {arm: int(step) for arm, step in re.findall(r"(tiny-\w+) at step (\d+)", last)}
    assert set(saved) == {"tiny-llama", "tiny-mixtral"}

    rerun = subprocess.run([sys.executable, "-m", "bakeoff.cli", "run", str(spec), "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    training = json.loads((out / "results.json").read_text())["training"]
    for arm, step in saved.items():
        assert training[arm]["resumed_from_step"] == step
        assert training[arm]["resume_status"] == f"resumed from step {step}"
        assert training[arm]["steps"] == 200 and training[arm]["segments"] == 2


@needs_proc
def test_sigkill_of_the_runner_leaves_no_task_process(tmp_path, cache_env):
    spec, out, log = run_spec(tmp_path, max_steps=2000), tmp_path / "out", tmp_path / "run.log"
    proc = bakeoff_run(spec, out, log)
    try:
        wait_training(proc, tmp_path / "ckpt", log)
        assert len(run_processes(out, proc.pid)) >= 4  # runner, watchdog, and each arm's finetune task
        proc.kill()  # the runner alone: nothing can catch this
        proc.wait(timeout=30)
        left = wait_gone(out, proc.pid, 10)
    finally:
        with_kill(proc)
    assert not left, left


def with_kill(proc: subprocess.Popen) -> None:
    """Whatever a failed test left of a run's process group, killed."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
