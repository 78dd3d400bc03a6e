"""Cluster policy: what a spec's cluster sections become in a pod, for the KFP tasks (``pipelines/``) and
the Kubeflow Trainer job's pods (``bakeoff.train.trainer_job``) alike.

Defaults a stage's resources leave open (a node selector and a toleration that follow the GPU, a
memory-backed ``/dev/shm`` with a GPU), the labels every pod carries (the Helm chart's NetworkPolicies
select them), the restricted security context, the Secret keys each stage's pods get as environment
variables, and the GPU pool defaults a cluster gives the specs submitted to it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bakeoff.errors import SpecError
from bakeoff.images import IMAGE_USER
from bakeoff.spec import STAGES, ExperimentSpec, StageResources, Toleration, parse_spec

log = logging.getLogger(__name__)

PART_OF = {"app.kubernetes.io/part-of": "bakeoff"}
STAGE_LABEL = "bakeoff/stage"
TRAINING_NODE = "training-node"  # the stage label of a Trainer job's pods
GPU_TAINT = Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
GPU_SHM = "16Gi"
# What the pod runs as (the images' non-root user) and the container's restrictions.
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": IMAGE_USER, "runAsGroup": IMAGE_USER, "fsGroup": IMAGE_USER,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}
# A stage pod for an arm whose heavy work runs elsewhere (a Trainer job, a hosted API): small, no GPU.
LAUNCHER = StageResources(cpu="1", memory="2Gi", shm_size=None)


def pod_labels(stage: str) -> dict[str, str]:
    """The labels of a pod of ``stage`` (or ``TRAINING_NODE``)."""
    return {**PART_OF, STAGE_LABEL: stage}


def shm_size(res: StageResources) -> str | None:
    """The memory-backed /dev/shm of a stage's pods: the spec's size, ``GPU_SHM`` with a GPU by default."""
    if res.shm_size == "auto":
        return GPU_SHM if res.gpu else None
    return res.shm_size


def node_selector(res: StageResources) -> dict[str, str]:
    """The spec's node selector, else the GPU product's node label."""
    if res.node_selector is not None:
        return dict(res.node_selector)
    return {"nvidia.com/gpu.product": res.gpu.product} if res.gpu else {}


def tolerations(res: StageResources) -> list[Toleration]:
    """The spec's tolerations, else the nvidia.com/gpu NoSchedule taint's with a GPU."""
    if res.tolerations is not None:
        return list(res.tolerations)
    return [GPU_TAINT] if res.gpu else []


def launcher(res: StageResources) -> StageResources:
    """``LAUNCHER`` with the stage's own time limit, retries (a retry attaches to the job it created) and caching."""
    return LAUNCHER.model_copy(update={"timeout_s": res.timeout_s, "retries": res.retries,
                                       "retry_backoff": res.retry_backoff, "caching": res.caching})


def secret_env(spec: ExperimentSpec, stage: str) -> list[tuple[str, str, str]]:
    """(Secret name, key, environment variable) for each Secret key ``stage``'s pods get; names only, no
    values. Which stage needs which key is the spec's ``secret_routes``."""
    out: list[tuple[str, str, str]] = []
    for route in spec.secret_routes():
        entry = (route.ref.name, route.ref.key, route.env)
        if stage in route.stages and entry not in out:
            out.append(entry)
    return out


def apply_resource_defaults(spec: ExperimentSpec, defaults: Any, source: str = "resource defaults") -> ExperimentSpec:
    """Fill the stages' resources the spec leaves unset from ``defaults`` (``{stage: {key: value}}``, e.g.
    the Helm chart's GPU pool ConfigMap, ``resources.yaml``); what the spec sets itself wins, key by key."""
    if not isinstance(defaults, dict):
        raise SpecError(f"{source}: expected a mapping of stage to resources", source)
    data = spec.model_dump(mode="json")
    errors = []
    for stage, values in defaults.items():
        if stage not in STAGES or not isinstance(values, dict):
            errors.append(f"{stage}: expected one of {', '.join(STAGES)} with a mapping of resources")
            continue
        explicit = getattr(spec.resources, stage).model_fields_set if stage in spec.resources.model_fields_set \
            else set()
        for key, value in values.items():
            if key not in explicit:
                data["resources"][stage][key] = value
    if errors:
        raise SpecError(errors, source)
    return parse_spec(data, source)


def with_gpu_pool(spec: ExperimentSpec, pool: str | None) -> ExperimentSpec:
    """The spec with the GPU pool defaults of the cluster it is submitted to (``pool``: a ``{stage:
    resources}`` YAML such as the Helm chart's ``bakeoff-gpu-pool`` ConfigMap) where it sets none."""
    import yaml

    if not pool:
        return spec
    try:
        defaults = yaml.safe_load(Path(pool).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read the GPU pool defaults: {exc}", pool) from exc
    log.info("resources the spec leaves unset come from %s", pool)
    return apply_resource_defaults(spec, defaults, pool)


__all__ = ["CONTAINER_SECURITY", "LAUNCHER", "PART_OF", "POD_SECURITY", "STAGE_LABEL", "TRAINING_NODE",
           "apply_resource_defaults", "launcher", "node_selector", "pod_labels", "secret_env", "shm_size",
           "tolerations", "with_gpu_pool"]
