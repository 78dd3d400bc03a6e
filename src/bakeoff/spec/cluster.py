"""The cluster sections: per-stage resources, the Trainer job, Kubernetes Secrets and the GPU price.

These are declarations only; what they become in a pod (defaults, labels, security context) is the
cluster policy in ``bakeoff.cluster``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from bakeoff.spec.base import SecretRef, Strict


class GpuSpec(Strict):
    """The accelerator a stage's pod asks for."""

    # The accelerator resource types KFP's compiler accepts for set_accelerator_type.
    type: Literal["nvidia.com/gpu", "amd.com/gpu"] = Field(default="nvidia.com/gpu", description="the resource")
    count: int = Field(default=1, gt=0, description="GPUs per pod (per node with several nodes)")
    product: str = Field(default="NVIDIA-A100-SXM4-80GB", description="the node label nvidia.com/gpu.product the "
                         "pod is placed by (unless node_selector is set)")


class Toleration(Strict):
    """A Kubernetes toleration, so the pod may land on tainted (GPU) nodes."""

    key: str = Field(description="the taint's key")
    operator: Literal["Exists", "Equal"] = Field(default="Exists", description="Exists or Equal (to value)")
    value: str | None = Field(default=None, description="the taint's value, with operator Equal")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default="NoSchedule", description="the taint effect tolerated (null: all)")


class StageResources(Strict):
    """Where and with what one stage runs on the cluster (ignored by the local runner)."""

    gpu: GpuSpec | None = Field(default=None, description="the accelerator, or null for a CPU pod")
    node_selector: dict[str, str] | None = Field(
        default=None, description="default with a GPU: nvidia.com/gpu.product = gpu.product"
    )
    tolerations: list[Toleration] | None = Field(
        default=None, description="default with a GPU: the nvidia.com/gpu NoSchedule taint"
    )
    cpu: str | None = Field(default=None, description="CPU request and limit (e.g. '8')")
    memory: str | None = Field(default=None, description="memory request and limit (e.g. 120Gi)")
    shm_size: str | None = Field(
        default="auto", description="a memory-backed /dev/shm of this size (data loaders, NCCL); auto: 16Gi with a "
        "GPU, none without; null: none"
    )
    timeout_s: int | None = Field(default=None, gt=0, description="the pod's time limit")
    retries: int = Field(default=2, ge=0, description="retries with exponential backoff when the task fails (a "
                         "preempted finetune resumes from its checkpoint)")
    retry_backoff: str = Field(default="60s", description="the first retry's wait; it doubles each time")
    caching: bool = Field(default=True, description="reuse a previous run's outputs for the same inputs")


class TrainerJobSpec(Strict):
    """How an arm with several nodes trains: a Kubeflow Trainer job the finetune component creates and follows."""

    api: Literal["trainjob", "pytorchjob"] = Field(
        default="trainjob", description="trainjob: Kubeflow Trainer v2 (trainer.kubeflow.org); pytorchjob: the "
        "older Training Operator (kubeflow.org/v1)"
    )
    runtime: str = Field(default="torch-distributed", description="the TrainJob's ClusterTrainingRuntime")
    pod_overrides: Literal["runtimePatches"] = Field(
        default="runtimePatches", description="the TrainJob field that carries node selector, tolerations, "
        "volumes and security context to the training pods: runtimePatches (Kubeflow Trainer v2.2+, the "
        "supported releases)"
    )
    namespace: str | None = Field(default=None, description="default: the namespace of the finetune pod")
    service_account: str | None = Field(default=None, description="the training pods' service account")
    poll_s: float = Field(default=15, gt=0, description="seconds between status checks")
    timeout_s: int | None = Field(default=None, gt=0, description="give up (and delete the job) after this long")

    @field_validator("pod_overrides", mode="before")
    @classmethod
    def _no_trainer_v2_1(cls, value):
        if value == "podTemplateOverrides":
            raise ValueError("podTemplateOverrides is Kubeflow Trainer v2.1's field, which is not supported: v2.1 "
                             "has no activeDeadlineSeconds and no securityContext for the pods (it would drop "
                             "them). Upgrade the Trainer to v2.2+ and remove this key (runtimePatches is the "
                             "default), or use resources.trainer.api: pytorchjob with the Training Operator")
        return value


class ResourcesSpec(Strict):
    """Per-stage placement on the cluster, and an optional PVC that caches models across runs."""

    prepare: StageResources = Field(default=StageResources(), description="the prepare stage's pod")
    finetune: StageResources = Field(default=StageResources(gpu=GpuSpec()), description="each arm's finetune pod "
                                     "(each training node's, with several nodes)")
    generate: StageResources = Field(default=StageResources(gpu=GpuSpec()), description="each arm's generate pod")
    evaluate: StageResources = Field(default=StageResources(), description="each arm's evaluate pod")
    report: StageResources = Field(default=StageResources(), description="the report stage's pod")
    model_cache_pvc: str | None = Field(
        default=None, description="a PVC mounted at /cache in finetune and generate (BAKEOFF_CACHE, HF_HOME)"
    )
    trainer: TrainerJobSpec = Field(default=TrainerJobSpec(), description="arms with several nodes")


class S3SecretRef(Strict):
    """The Secret that holds the S3 (MinIO) credentials, and optionally the endpoint."""

    name: str = Field(min_length=1, description="the Secret's name")
    access_key_key: str = Field(default="AWS_ACCESS_KEY_ID", description="its key holding the access key")
    secret_key_key: str = Field(default="AWS_SECRET_ACCESS_KEY", description="its key holding the secret key")
    endpoint_key: str | None = Field(default=None, description="a key holding S3_ENDPOINT, if the Secret has one")
    endpoint_config_map: str | None = Field(
        default=None, description="a ConfigMap whose S3_ENDPOINT, S3_SECURE and AWS_REGION keys become env vars "
        "(the Helm chart publishes <release>-s3); the endpoint is not a secret"
    )


class SecretsSpec(Strict):
    """Kubernetes Secrets whose keys reach the pods as environment variables."""

    hf_token: SecretRef | None = Field(default=None, description="-> HF_TOKEN (prepare, finetune, generate)")
    judge_api_key: SecretRef | None = Field(
        default=None, description="-> the judge's api_key_env (prepare, generate, evaluate); the same as "
        "evaluation.judge.api_key_secret"
    )
    s3: S3SecretRef | None = Field(
        default=None, description="-> AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (every stage)"
    )


class CostSpec(Strict):
    """Prices, for the cost columns of the report."""

    gpu_hour_usd: float | None = Field(default=None, ge=0, description="price of one GPU-hour")


__all__ = ["CostSpec", "GpuSpec", "ResourcesSpec", "S3SecretRef", "SecretsSpec", "StageResources", "Toleration",
           "TrainerJobSpec"]
