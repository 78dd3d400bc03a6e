# No `from __future__ import annotations` here: KFP reads the pipeline's annotations at runtime.
"""The bake-off DAG: prepare -> ParallelFor(arm: finetune -> generate -> evaluate) -> Collected -> report.

The pipeline is built per spec: the arms are the ParallelFor items, and each stage's scheduling
(GPU type and count, node selector, tolerations, CPU and memory) comes from ``spec.resources``.
The spec itself travels as the ``spec_json`` parameter (editable in the Kubeflow UI).
"""


import builtins
import logging
import os
import shutil
import time
from pathlib import Path
from typing import NamedTuple

from bakeoff_components import evaluate, finetune, generate, generate_vllm, prepare_data, report
from kfp import compiler, dsl, kubernetes
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Model

from bakeoff import cluster
from bakeoff.spec import ExperimentSpec, StageResources
from bakeoff.storage import MODEL_CACHE_ENV, MODEL_CACHE_MOUNT, S3_SETTINGS

log = logging.getLogger(__name__)


def place(task: dsl.PipelineTask, res: StageResources) -> dsl.PipelineTask:
    """Apply one stage's resources: accelerator, node selector, tolerations, CPU and memory, /dev/shm,
    time limit, retries and caching."""
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
    if res.retries:
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


def stage(task: dsl.PipelineTask, name: str, spec: ExperimentSpec) -> dsl.PipelineTask:
    """Placement, Secrets and security context of one stage's task."""
    return harden(attach_secrets(place(task, getattr(spec.resources, name)), name, spec), name)


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
    placement and cannot resolve dsl.OneOf artifacts.
    """
    placements = {arm.name: placement_of(arm) for arm in spec.arms}
    on_gpu = gpu_generate(spec)
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
        prep = stage(prepare_data(spec_json=spec_json), "prepare", spec).set_display_name("prepare-data")
        with dsl.ParallelFor(items=arm_items, name="arms") as item:
            arm = item.arm if branching else item
            data = prep.outputs["data"]
            if branching:
                model = finetune_any(spec_json=spec_json, arm=arm, placement=item.placement, data=data).output
            else:
                model = stage(finetune(spec_json=spec_json, arm=arm, data=data), "finetune", spec).outputs["model"]
            if hosted:
                generations = generate_any(spec_json=spec_json, arm=arm, placement=item.placement, data=data,
                                           model=model).output
            else:
                generations = stage(on_gpu(spec_json=spec_json, arm=arm, data=data, model=model), "generate",
                                    spec).outputs["generations"]
            ev = stage(evaluate(spec_json=spec_json, arm=arm, generations=generations),
                       "evaluate", spec)
        rep = stage(
            report(spec_json=spec_json, data=prep.outputs["data"], models=dsl.Collected(model),
                   scores=dsl.Collected(ev.outputs["scores"])),
            "report", spec,
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


def run_local(spec: ExperimentSpec, out_dir: str | Path) -> dict[str, Path]:
    """Run the pipeline through KFP's local subprocess runner; copy the report into ``out_dir``.

    Every stage's artifacts stay under ``out_dir/kfp/`` (the local pipeline root).
    """
    from kfp import local

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
    try:
        task = build_pipeline(spec, local=True)()
    finally:
        builtins.print = original_print
    paths = {}
    for key, name in (("html", "report.html"), ("markdown", "report.md"), ("results", "results.json")):
        target = out / name
        shutil.copyfile(task.outputs[key].path, target)
        paths[key] = target
    log.info("pipeline finished in %.1f s", time.perf_counter() - started)
    return paths
