"""The experiment spec: one typed pydantic model, loaded from YAML, the single source of truth of a run.

Every section is strict (unknown keys are errors) so a misspelt key is reported instead of silently
ignored, and every field is documented (``description=``). Errors are collected and reported one per
line with the key path (``arms[1].peft.r: Input should be greater than 0``). The modules follow the
spec's seams: ``data``, ``training`` (and PEFT), ``endpoint`` (the one OpenAI-compatible endpoint
model), ``evaluation`` (and generation), ``cluster``, ``experiment`` (arms and the checks across
sections) and ``loading``. What the cluster sections become in a pod is ``bakeoff.cluster``'s.
"""

from bakeoff.spec.base import SLUG, SecretRef, Strict
from bakeoff.spec.cluster import (
    CostSpec,
    GpuSpec,
    ResourcesSpec,
    S3SecretRef,
    SecretsSpec,
    StageResources,
    Toleration,
    TrainerJobSpec,
)
from bakeoff.spec.data import DataSource, DataSpec, SplitSpec, TemplateChoice, UserTemplate
from bakeoff.spec.endpoint import Endpoint, ModelEndpoint
from bakeoff.spec.evaluation import (
    METRICS,
    PAIRS,
    RAGAS_METRICS,
    SLOT_METRICS,
    VARIANTS,
    EvaluationSpec,
    ExactMatchSpec,
    GenerationEndpoint,
    GenerationSpec,
    JudgeSpec,
    PairwiseEndpoint,
    PairwiseSpec,
    RagasSpec,
    SqlEvalSpec,
    contestant,
    metric_names,
    pairwise_endpoint,
    pairwise_errors,
    pairwise_pairs,
)
from bakeoff.spec.experiment import STAGES, ArmSpec, ExperimentSpec, HostedFineTune, SecretRoute
from bakeoff.spec.loading import format_validation_errors, load_spec, parse_spec, spec_from_json
from bakeoff.spec.training import PeftOverride, PeftSpec, TrainingSpec, merge_peft, peft_conflicts

__all__ = [
    "METRICS", "PAIRS", "RAGAS_METRICS", "SLOT_METRICS", "SLUG", "STAGES", "VARIANTS", "ArmSpec", "CostSpec",
    "DataSource", "DataSpec", "Endpoint", "EvaluationSpec", "ExactMatchSpec", "ExperimentSpec", "GenerationEndpoint",
    "GenerationSpec", "GpuSpec", "HostedFineTune", "JudgeSpec", "ModelEndpoint", "PairwiseEndpoint", "PairwiseSpec",
    "PeftOverride", "PeftSpec", "RagasSpec", "ResourcesSpec", "S3SecretRef", "SecretRef", "SecretRoute",
    "SecretsSpec", "SplitSpec", "SqlEvalSpec", "StageResources", "Strict", "TemplateChoice", "Toleration",
    "TrainerJobSpec", "TrainingSpec", "UserTemplate", "contestant", "format_validation_errors", "load_spec",
    "merge_peft", "metric_names", "pairwise_endpoint", "pairwise_errors", "pairwise_pairs", "parse_spec",
    "peft_conflicts", "spec_from_json",
]
