# No `from __future__ import annotations` here: KFP reads the pipeline's annotations at runtime.
"""The bake-off DAG: prepare -> ParallelFor(arm: finetune -> generate -> evaluate) -> Collected -> report.

The pipeline is built per spec: the arms are the ParallelFor items, and each stage's scheduling
(GPU type and count, node selector, tolerations, CPU and memory) comes from ``spec.resources``.
The spec itself travels as the ``spec_json`` parameter (editable in the Kubeflow UI).

``run_local`` runs it on this machine through KFP's subprocess runner, as a tool should: no retries (a
cluster's policy: a local failure is the user's to read), the first failing task stops the run and its
error is the last line, SIGINT or SIGTERM stops every task (training saves a checkpoint first), and no
task process outlives the runner, even a SIGKILLed one (``LocalTasks``).
"""


import builtins
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from bakeoff_components import evaluate, finetune, generate, generate_vllm, pairwise_judge, prepare_data, report
from kfp import compiler, dsl, kubernetes
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Model

from bakeoff import cluster
from bakeoff.errors import BakeoffError
from bakeoff.spec import ExperimentSpec, StageResources
from bakeoff.stages import ERROR_FILE_ENV
from bakeoff.storage import MODEL_CACHE_ENV, MODEL_CACHE_MOUNT, S3_SETTINGS

log = logging.getLogger(__name__)


def place(task: dsl.PipelineTask, res: StageResources, retries: bool = True) -> dsl.PipelineTask:
    """Apply one stage's resources: accelerator, node selector, tolerations, CPU and memory, /dev/shm,
    time limit, retries (unless ``retries`` is False: the local runner's tasks) and caching."""
    if res.gpu is not None:
        task.set_accelerator_type(res.gpu.type).set_accelerator_limit(res.gpu.count)
    for key, value in sorted(cluster.node_selector(res).items()):
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in cluster.tolerations(res):
        kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)
    if res.cpu:
        task.set_cpu_request(res.cpu).set_cpu_limit(res.cpu)
    if res.memory:
        task.set_memory_request(res.memory).set_memory_limit(res.memory)
    if cluster.shm_size(res):
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=cluster.shm_size(res))
    if res.timeout_s:
        kubernetes.set_timeout(task, res.timeout_s)
    if res.retries and retries:
        task.set_retry(num_retries=res.retries, backoff_duration=res.retry_backoff, backoff_factor=2)
    task.set_caching_options(res.caching)
    return task


def attach_secrets(task: dsl.PipelineTask, stage: str, spec: ExperimentSpec) -> dsl.PipelineTask:
    """Environment variables from the spec's Kubernetes Secrets (names and keys only; no value is compiled)."""
    by_secret: dict[str, dict[str, str]] = {}
    for name, key, env in cluster.secret_env(spec, stage):
        by_secret.setdefault(name, {})[key] = env
    for name, keys in by_secret.items():
        kubernetes.use_secret_as_env(task, name, keys)
    if spec.secrets.s3 and spec.secrets.s3.endpoint_config_map:
        # the ConfigMap's keys become env vars of the same name
        kubernetes.use_config_map_as_env(task, spec.secrets.s3.endpoint_config_map, {k: k for k in S3_SETTINGS},
                                         optional=True)
    if stage in ("finetune", "generate") and spec.resources.model_cache_pvc:
        kubernetes.mount_pvc(task, pvc_name=spec.resources.model_cache_pvc, mount_path=MODEL_CACHE_MOUNT)
        for name, value in MODEL_CACHE_ENV.items():
            task.set_env_variable(name, value)
    return task


def harden(task: dsl.PipelineTask, name: str) -> dsl.PipelineTask:
    """Run as the images' non-root user (the KFP compiler adds no privilege escalation, dropped
    capabilities and the RuntimeDefault seccomp profile); label the pod with its stage (cluster policy)."""
    security = cluster.POD_SECURITY
    kubernetes.set_security_context(task, run_as_user=security["runAsUser"], run_as_group=security["runAsGroup"],
                                    run_as_non_root=security["runAsNonRoot"])
    for key, value in cluster.pod_labels(name).items():
        kubernetes.add_pod_label(task, key, value)
    return task


def stage(task: dsl.PipelineTask, name: str, spec: ExperimentSpec, retries: bool = True) -> dsl.PipelineTask:
    """Placement, Secrets and security context of one stage's task (with the stage's retries unless
    ``retries`` is False)."""
    return harden(attach_secrets(place(task, getattr(spec.resources, name), retries), name, spec), name)


def on_cpu(task: dsl.PipelineTask, name: str, spec: ExperimentSpec, display: str) -> dsl.PipelineTask:
    """A stage's task for an arm whose heavy work runs elsewhere (a Kubeflow Trainer job's pods, a hosted
    fine-tuning API): a small CPU pod without a GPU, with the stage's time limit, retries (a retry attaches
    to the job it created), caching and Secrets."""
    placed = place(task, cluster.launcher(getattr(spec.resources, name)))
    return harden(attach_secrets(placed, name, spec), name).set_display_name(display)


def placement_of(arm) -> str:
    """Where an arm's finetune and generate run: one-node (this pod's GPUs), several-nodes (a Trainer job
    started from a CPU launcher), hosted (an API, from CPU pods)."""
    if arm.is_hosted:
        return "hosted"
    return "one-node" if arm.nodes == 1 else "several-nodes"


def gpu_generate(spec: ExperimentSpec):
    """The generate component of the arms that generate on a GPU: the image with vLLM when the stage has a
    GPU and the backend may be vLLM (auto picks it there for what it can serve), else the plain one."""
    if spec.resources.generate.gpu is not None and spec.generation.backend in ("auto", "vllm"):
        return generate_vllm
    return generate


def build_pipeline(spec: ExperimentSpec, local: bool = False):
    """The KFP pipeline function for ``spec``.

    On a cluster, arms whose work runs elsewhere (several nodes, hosted) take CPU-pod branches chosen
    per arm (dsl.If / dsl.OneOf). ``local``: one path for every arm, since the local runner ignores
    placement and cannot resolve dsl.OneOf artifacts; and no retries (a local failure does not change on
    a retry, and the user reads it at once).
    """
    # one task set per run: an arm's replicates (NAME, NAME-r2, ...) are parallel tasks like arms
    placements = {run: placement_of(arm) for arm in spec.arms for run in spec.arm_runs(arm)}
    on_gpu = gpu_generate(spec)
    retries = not local
    branching = not local and set(placements.values()) != {"one-node"}
    hosted = branching and "hosted" in placements.values()
    if branching:
        arm_items = [{"arm": name, "placement": where} for name, where in placements.items()]
    else:
        arm_items = list(placements)

    class Outputs(NamedTuple):
        html: HTML
        markdown: Markdown
        results: Artifact

    @dsl.pipeline(name="finetune-any")
    def finetune_any(spec_json: str, arm: str, placement: str, data: Input[Dataset]) -> Model:
        """One arm's finetune: on this pod's GPUs, or from a CPU launcher (a Trainer job, a hosted job)."""
        with dsl.If(placement == "one-node", name="one-node"):
            here = stage(finetune(spec_json=spec_json, arm=arm, data=data), "finetune", spec)
        with dsl.Else(name="launched"):
            launched = on_cpu(finetune(spec_json=spec_json, arm=arm, data=data), "finetune", spec,
                              "finetune-launcher")
        return dsl.OneOf(here.outputs["model"], launched.outputs["model"])

    @dsl.pipeline(name="generate-any")
    def generate_any(spec_json: str, arm: str, placement: str, data: Input[Dataset], model: Input[Model]) -> Dataset:
        """One arm's generation: on a GPU, or (hosted) through the provider's API from a CPU pod."""
        with dsl.If(placement != "hosted", name="on-gpu"):
            gpu = stage(on_gpu(spec_json=spec_json, arm=arm, data=data, model=model), "generate", spec)
        with dsl.Else(name="hosted"):
            api = on_cpu(generate(spec_json=spec_json, arm=arm, data=data, model=model), "generate", spec,
                         "generate-hosted")
        return dsl.OneOf(gpu.outputs["generations"], api.outputs["generations"])

    @dsl.pipeline(name=f"bakeoff-{spec.name}", description=spec.description or f"bakeoff experiment {spec.name}")
    def bakeoff(spec_json: str = spec.to_json()) -> Outputs:
        prep = stage(prepare_data(spec_json=spec_json), "prepare", spec, retries).set_display_name("prepare-data")
        with dsl.ParallelFor(items=arm_items, name="arms") as item:
            arm = item.arm if branching else item
            data = prep.outputs["data"]
            if branching:
                model = finetune_any(spec_json=spec_json, arm=arm, placement=item.placement, data=data).output
            else:
                model = stage(finetune(spec_json=spec_json, arm=arm, data=data), "finetune", spec,
                              retries).outputs["model"]
            if hosted:
                generations = generate_any(spec_json=spec_json, arm=arm, placement=item.placement, data=data,
                                           model=model).output
            else:
                generations = stage(on_gpu(spec_json=spec_json, arm=arm, data=data, model=model), "generate",
                                    spec, retries).outputs["generations"]
            ev = stage(evaluate(spec_json=spec_json, arm=arm, generations=generations),
                       "evaluate", spec, retries)
        # The pairwise judge (evaluation.pairwise; without it the task only writes {"configured": false}) sees
        # every arm's answers at once, in the evaluate stage's image and with its Secrets.
        pw = stage(pairwise_judge(spec_json=spec_json, scores=dsl.Collected(ev.outputs["scores"])), "evaluate",
                   spec, retries).set_display_name("pairwise-judge")
        rep = stage(
            report(spec_json=spec_json, data=prep.outputs["data"], models=dsl.Collected(model),
                   scores=dsl.Collected(ev.outputs["scores"]), pairwise=pw.outputs["pairwise"]),
            "report", spec, retries,
        )
        # Never cached: on a cache hit the backend reuses the earlier execution's artifacts, which live under
        # the earlier run's id, and `--fetch-report` (which reads under this run's id) would find none. The
        # report is cheap to render again.
        rep.set_caching_options(False)
        return Outputs(html=rep.outputs["html"], markdown=rep.outputs["markdown"], results=rep.outputs["results"])

    return bakeoff


def compile_pipeline(spec: ExperimentSpec, path: str | Path) -> Path:
    """Write the KFP IR YAML for ``spec`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(spec), package_path=str(path))
    return path


# The local run's watchdog: it reads "+ PGID" / "- PGID" lines from the runner and, when its input ends (the
# runner finished or died, even by SIGKILL), kills every process group still listed. It ignores the signals a
# terminal or a group kill sends, so that it outlives the runner long enough to do so.
_WATCHDOG = """import os, signal, sys
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    op, pgid = line.split()
    (groups.add if op == "+" else groups.discard)(int(pgid))
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""

STOP_GRACE_S = 12.0  # after SIGTERM, a task has this long to save and stop before its process group is killed


class RunInterrupted(BakeoffError):
    """A local run stopped by SIGINT or SIGTERM; ``saved``: the trainings that stopped with a checkpoint
    (arm, step, checkpoint, and ``kept``: whether it is where a rerun looks, ``training.checkpoint_uri``)."""

    def __init__(self, signame: str, saved: list):
        self.signame, self.saved = signame, saved
        super().__init__(self.summary())

    def summary(self, command: str | None = None) -> str:
        """One line: what was saved, and how to resume (``command``: the command line to rerun)."""
        rerun = f"`{command}`" if command else "the same command"
        head = f"interrupted ({self.signame})"
        kept = [s for s in self.saved if s.get("kept")]
        if kept:
            where = ", ".join(f"{s['arm']} at step {s['step']} ({s['checkpoint']})" if s.get("step") is not None
                              else f"{s['arm']} ({s['checkpoint']})" for s in kept)
            return f"{head}: saved checkpoints of {where}; rerun {rerun} to resume"
        if self.saved:
            arms = ", ".join(s["arm"] for s in self.saved)
            return (f"{head}: stopped training {arms}; no checkpoint is kept for a rerun since "
                    "training.checkpoint_uri is not set (set it, and a rerun resumes)")
        return f"{head}: no training was under way, so nothing was saved; rerun {rerun} to run it again"


class LocalTaskFailed(BakeoffError):
    """A task of a local run failed; the message names it and says why (its typed error's own text)."""


@dataclass
class _Task:
    name: str  # "finetune (arm tiny-llama)"
    proc: subprocess.Popen
    error_file: Path
    last_line: str = ""


def task_name(command: list) -> str:
    """What a component's command line runs, as the run's messages name it: "prepare-data", or
    "finetune (arm tiny-llama)" for an arm's task."""

    def value(flag: str) -> str | None:
        return command[command.index(flag) + 1] if flag in command[:-1] else None

    name = (value("--function_to_execute") or "task").replace("_", "-")
    try:
        arm = json.loads(value("--executor_input") or "{}")["inputs"]["parameterValues"].get("arm")
    except (ValueError, KeyError, TypeError, AttributeError):
        arm = None
    return f"{name} (arm {arm})" if arm else name


def _why(task: _Task, code: int) -> dict:
    """Why a task ended with ``code``: its typed error (the error file its stage wrote), else the signal that
    killed it, else its exit status and last line."""
    try:
        record = json.loads(task.error_file.read_text())
    except (OSError, ValueError):
        record = {}
    if record.get("message"):
        return record
    # a signal kills `sh -ec` (negative status) or the python under it (128 + the signal, through sh)
    killed = -code if code < 0 else code - 128 if 128 < code < 128 + 65 else None
    if killed is not None:
        try:
            name = signal.Signals(killed).name
        except ValueError:
            name = f"signal {killed}"
        return {"message": f"killed by {name}" + (" (out of memory?)" if killed == signal.SIGKILL else "")}
    last = f": {task.last_line}" if task.last_line else ""
    return {"message": f"exit {code}{last} (its log above has the traceback)"}


class LocalTasks:
    """The task processes of one local run, in place of kfp.local's own launcher (``run`` has its signature):

    - each task runs in its own session (a terminal's Ctrl-C reaches the runner alone) with stdin closed,
      and is registered with a watchdog process that kills its process group if the runner dies;
    - ``stop`` sends SIGTERM to every running task's process group (training saves a checkpoint and stops),
      starts no new task, and kills what is left after ``STOP_GRACE_S`` (or at once on a second signal);
    - the first failing task stops the others, and its error (the file its stage writes, see
      ``bakeoff.stages.reported``) is what ``outcome`` reports.
    """

    def __init__(self, out: Path):
        self.lock = threading.Lock()
        self.running: dict = {}  # pgid -> _Task
        self.stopping = False
        self.interrupted: str | None = None  # the signal that stopped the run, if one did
        self.cause: str | None = None  # "interrupt" or "failure": what stopped the run first
        self.failures: list = []  # (task name, why) of tasks that failed before any stop
        self.saved: list = []  # what stopped trainings saved
        self.errors = Path(tempfile.mkdtemp(prefix="bakeoff-run-"))
        self.watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, "bakeoff-watchdog", str(out)],
                                         stdin=subprocess.PIPE, text=True)

    def _watch(self, op: str, pgid: int) -> None:
        try:
            self.watchdog.stdin.write(f"{op} {pgid}\n")
            self.watchdog.stdin.flush()
        except (OSError, ValueError):
            log.warning("the run's watchdog is gone: task processes may outlive a killed runner")

    def run(self, full_command: list, env_vars: dict | None = None) -> int:
        """Run one task's command, printing its output as kfp.local does; its exit status."""
        name = task_name(full_command)
        error_file = self.errors / f"{uuid.uuid4().hex}.json"
        env = {**os.environ, **(env_vars or {}), ERROR_FILE_ENV: str(error_file)}
        with self.lock:
            if self.stopping:
                print(f"{name}: not started, the run is stopping")
                return 1
            proc = subprocess.Popen(full_command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, bufsize=1, env=env, start_new_session=True)
            task = self.running[proc.pid] = _Task(name, proc, error_file)
            self._watch("+", proc.pid)
        try:
            for line in iter(proc.stdout.readline, ""):
                print(line, end="")
                task.last_line = line.strip() or task.last_line
            print("\n")
            code = proc.wait()
        finally:
            proc.stdout.close()
            with self.lock:
                del self.running[proc.pid]
                self._watch("-", proc.pid)
        if code != 0:
            self._ended(task, code)
        return code

    def _ended(self, task: _Task, code: int) -> None:
        why = _why(task, code)
        with self.lock:
            if why.get("saved"):
                self.saved.append(why["saved"])
            first = not self.stopping
            if first:
                self.failures.append((task.name, why["message"]))
                others = [t.name for t in self.running.values()]
        if first:
            if others:
                log.warning("%s failed: stopping %s", task.name, ", ".join(others))
            self.stop(None)

    def stop(self, signame: str | None) -> None:
        """Stop the run: SIGTERM to every running task's process group, no new task, SIGKILL after
        ``STOP_GRACE_S``; ``signame``: the signal that asked for it (None: a task failed). A signal while
        the run is already stopping kills the tasks at once."""
        with self.lock:
            again = self.stopping and signame is not None
            if signame is not None:
                self.interrupted = self.interrupted or signame
            first, self.stopping = not self.stopping, True
            self.cause = self.cause or ("interrupt" if signame else "failure")
            groups = list(self.running)
        if again:
            log.warning("%s again: killing the run's tasks now", signame)
            _signal_groups(groups, signal.SIGKILL)
            return
        if not first:
            return
        if signame:
            log.warning("%s: stopping the run; running tasks save what they can (training: a checkpoint) and "
                        "stop (%s again kills them at once)", signame, signame)
        _signal_groups(groups, signal.SIGTERM)
        timer = threading.Timer(STOP_GRACE_S, self._kill_left)
        timer.daemon = True
        timer.start()

    def _kill_left(self) -> None:
        with self.lock:
            groups = list(self.running)
        if groups:
            log.warning("tasks still running %.0f s after SIGTERM: killing them", STOP_GRACE_S)
            _signal_groups(groups, signal.SIGKILL)

    @contextlib.contextmanager
    def stopping_on_signals(self):
        """SIGINT and SIGTERM stop the run (``stop``, from a thread of its own) while in this block."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            threading.Thread(target=self.stop, args=(signal.Signals(signum).name,), daemon=True).start()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def outcome(self, exc: Exception) -> BakeoffError:
        """The error a stopped or failed run ends with: interrupted (what was saved), or the first failing
        task and its error, or (neither) kfp's own message."""
        if self.cause == "interrupt":
            return RunInterrupted(self.interrupted, self.saved)
        if self.failures:
            name, message = self.failures[0]
            return LocalTaskFailed(f"{name} failed: {message}")
        return BakeoffError(f"pipeline failed: {exc}")

    def close(self) -> None:
        """End the watchdog (nothing is left for it to kill) and remove the error files."""
        with contextlib.suppress(OSError, ValueError):
            self.watchdog.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.watchdog.wait(timeout=10)
        shutil.rmtree(self.errors, ignore_errors=True)


def _signal_groups(groups: list, sig: int) -> None:
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, sig)


def run_local(spec: ExperimentSpec, out_dir: str | Path) -> dict[str, Path]:
    """Run the pipeline through KFP's local subprocess runner; copy the report into ``out_dir``.

    Every stage's artifacts stay under ``out_dir/kfp/`` (the local pipeline root). A failed task raises
    ``LocalTaskFailed`` (its name and error); SIGINT or SIGTERM stops the run and raises ``RunInterrupted``.
    """
    from kfp import local
    from kfp.local import subprocess_task_handler

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # The local runner runs the arms' tasks at the same time; torch in each would take every core and
    # the processes would thrash (10x slower seen on 2 cores). Share the cores out instead.
    if "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // max(1, len(spec.arms)))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        log.info("local run: %d arm(s) in parallel, OMP_NUM_THREADS=%d per task", len(spec.arms), threads)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out / "kfp"), raise_on_error=True)
    started = time.perf_counter()
    # kfp.local indents task logs by swapping builtins.print; with the arms' tasks in parallel threads
    # the swaps interleave and an indenting print can be left installed. Put it back as it was.
    original_print = builtins.print
    tasks = LocalTasks(out)
    # kfp.local (pinned) starts each task with this module function; ours adds the process groups, the
    # watchdog, the stop and the error files (tests/test_interrupts.py)
    kfp_launcher = subprocess_task_handler.run_local_subprocess
    subprocess_task_handler.run_local_subprocess = tasks.run
    try:
        with tasks.stopping_on_signals():
            task = build_pipeline(spec, local=True)()
    except RuntimeError as exc:  # kfp.local: a task failed (or was stopped)
        raise tasks.outcome(exc) from None
    finally:
        builtins.print = original_print
        subprocess_task_handler.run_local_subprocess = kfp_launcher
        tasks.close()
    paths = {}
    for key, name in (("html", "report.html"), ("markdown", "report.md"), ("results", "results.json")):
        target = out / name
        shutil.copyfile(task.outputs[key].path, target)
        paths[key] = target
    log.info("pipeline finished in %.1f s", time.perf_counter() - started)
    return paths
