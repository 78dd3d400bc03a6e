"""The whole experiment: its arms (local or hosted), every section, and the checks across sections."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bakeoff.errors import SpecError
from bakeoff.spec.base import MAX_BATCH_SIZE, MAX_SEED, SecretRef, Strict, positive_or_auto, slug
from bakeoff.spec.cluster import CostSpec, ResourcesSpec, SecretsSpec
from bakeoff.spec.data import DataSpec
from bakeoff.spec.endpoint import Endpoint
from bakeoff.spec.evaluation import EvaluationSpec, GenerationSpec, pairwise_endpoint, pairwise_errors
from bakeoff.spec.training import (
    MAX_REPLICATES,
    PeftOverride,
    PeftSpec,
    TrainingSpec,
    merge_peft,
    peft_conflicts,
)

STAGES = ("prepare", "finetune", "generate", "evaluate", "report")


class HostedFineTune(Endpoint):
    """A hosted fine-tuning job on the OpenAI fine-tuning API (or a server that speaks it): the arm's
    ``model`` is the provider's base model id (``gpt-4o-mini-2024-07-18``, ``gpt-3.5-turbo-0125``).

    The finetune stage uploads the train and validation splits as chat JSONL, estimates the trained
    tokens and their cost, refuses to start above ``max_cost_usd``, creates the job (its id is kept
    so a rerun attaches to it instead of paying twice) and follows it to the end; the generate stage
    asks the fine-tuned model (fine-tuned variant) and ``model`` (base variants) through chat completions.
    """

    usd_per_1m_training_tokens: float = Field(
        ge=0, description="the provider's training price (gpt-4o-mini: 3.00, gpt-3.5-turbo: 8.00 at the time "
        "of writing); cost = trained tokens (epochs included) x price"
    )
    max_cost_usd: float = Field(
        default=20.0, ge=0, description="refuse to create a job whose estimated cost is above this; raise it "
        "to allow more"
    )
    epochs: int | Literal["auto"] = Field(default="auto", description="n_epochs, or auto (the provider picks)")
    batch_size: int | Literal["auto"] = Field(default="auto", description="the job's batch size, or auto")
    learning_rate_multiplier: float | Literal["auto"] = Field(default="auto", description="the job's learning-rate "
                                                              "multiplier, or auto")
    suffix: str | None = Field(default=None, max_length=64, description="in the fine-tuned model's name")
    system_prompt: str | None = Field(
        default=None, description="a system message before each example's user message (training and generation)"
    )
    base_url: str = Field(default="https://api.openai.com/v1", min_length=1, description="the fine-tuning API")
    poll_s: float = Field(default=30, gt=0, description="seconds between status checks at first")
    poll_max_s: float = Field(default=300, gt=0, description="the wait grows to this while nothing changes")
    concurrency: int = Field(default=8, gt=0, description="chat completion requests at a time when generating")
    timeout_s: float = Field(default=120, gt=0, description="per API request, in seconds")

    @field_validator("epochs", mode="wrap")
    @classmethod
    def _int_or_auto(cls, v: Any, handler: Any) -> int | str:
        return positive_or_auto(v, integer=True)  # the handler's union errors would name its branches

    @field_validator("batch_size", mode="wrap")
    @classmethod
    def _batch_or_auto(cls, v: Any, handler: Any) -> int | str:
        return positive_or_auto(v, integer=True, maximum=MAX_BATCH_SIZE)

    @field_validator("learning_rate_multiplier", mode="wrap")
    @classmethod
    def _float_or_auto(cls, v: Any, handler: Any) -> float | str:
        return positive_or_auto(v, integer=False)


class ArmSpec(Strict):
    """One contestant: a base model, optionally with its own PEFT settings over the shared ones; or, with
    ``kind: openai``, a hosted fine-tuning job (``hosted``) on the same data."""

    name: str = Field(description="the arm's name in the report and in task names (lowercase, digits, '-')")
    kind: Literal["local", "openai"] = Field(
        default="local", description="local: trained by bakeoff (peft/TRL); openai: a hosted fine-tuning job"
    )
    model: str = Field(min_length=1, description="hf://org/name[@rev], tiny://FAMILY, s3://bucket/key or a path; "
                       "kind openai: the provider's base model id")
    peft: PeftOverride = Field(default_factory=PeftOverride, description="keys of `peft` to override for this arm")
    trust_remote_code: bool = Field(default=False, description="run the model repository's own code (only for "
                                    "models you trust)")
    nodes: int = Field(
        default=1, ge=1, description="training nodes, each with resources.finetune.gpu; more than 1 runs a "
        "Kubeflow Trainer job (resources.trainer) from the finetune component"
    )
    hosted: HostedFineTune | None = Field(default=None, description="the hosted job's settings (kind openai)")
    replicates: int | None = Field(default=None, ge=1, le=MAX_REPLICATES, description="this arm's "
                                   "training.replicates (default: the experiment's)")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="this arm's training seed (default: "
                             "the experiment's seed; replicate i trains with it + i - 1); the splits always "
                             "follow the experiment's seed")

    _check_name = field_validator("name")(classmethod(lambda cls, v: slug(v)))

    @property
    def is_hosted(self) -> bool:
        """Whether a provider trains this arm (no local weights, no PEFT settings)."""
        return self.kind != "local"


def _hosted_arm_errors(arm: ArmSpec) -> list[str]:
    """What is wrong with an arm's kind-specific settings, each as ``key: message`` under the arm."""
    if not arm.is_hosted:
        return ["hosted: only for kind openai (this arm is trained locally)"] if arm.hosted is not None else []
    errors = []
    if arm.hosted is None:
        errors.append("hosted: required for kind openai (at least usd_per_1m_training_tokens, the price)")
    overridden = sorted(k for k, v in arm.peft.model_dump().items() if v is not None)
    if overridden:
        errors.append(f"peft: a hosted arm has no PEFT settings (the provider trains it); remove "
                      f"{', '.join(overridden)}")
    if arm.nodes != 1:
        errors.append("nodes: a hosted arm trains on the provider's machines; remove nodes")
    if arm.trust_remote_code:
        errors.append("trust_remote_code: a hosted arm loads no model code; remove it")
    if "://" in arm.model:
        errors.append(f"model: a hosted arm's model is the provider's model id (e.g. gpt-4o-mini-2024-07-18), "
                      f"not a URI; got {arm.model!r}")
    return errors


@dataclass(frozen=True)
class SecretRoute:
    """One Secret key that reaches the pods of ``stages`` as the environment variable ``env``; ``declared``
    is the spec key that names it."""

    ref: SecretRef
    env: str
    stages: tuple[str, ...]
    declared: str


class ExperimentSpec(Strict):
    """A whole bake-off: data, shared hyperparameters, arms, variants, evaluation, resources, cost."""

    name: str = Field(description="the experiment's name: runs/<name>, the KFP pipeline bakeoff-<name>")
    description: str = Field(default="", description="one line for the report and the KFP pipeline")
    seed: int = Field(default=42, ge=0, le=MAX_SEED, description="the split, the few-shot examples, training and "
                      f"the bootstrap (0 to {MAX_SEED}: numpy's seeds are 32-bit)")
    data: DataSpec = Field(description="the instruction data and its split")
    training: TrainingSpec = Field(default=TrainingSpec(), description="hyperparameters shared by every arm")
    peft: PeftSpec = Field(default=PeftSpec(), description="how weights train, shared by every arm")
    arms: list[ArmSpec] = Field(min_length=1, description="the contestants")
    variants: list[Literal["fine-tuned", "base-zero-shot", "base-few-shot"]] = Field(
        default_factory=lambda: ["fine-tuned", "base-zero-shot"], min_length=1,
        description="what answers each arm's test split: the fine-tuned model and its base, zero- or few-shot"
    )
    generation: GenerationSpec = Field(default=GenerationSpec(), description="decoding, the same for all")
    evaluation: EvaluationSpec = Field(default=EvaluationSpec(), description="metrics and their endpoints")
    resources: ResourcesSpec = Field(default=ResourcesSpec(), description="placement on the cluster")
    cost: CostSpec = Field(default=CostSpec(), description="prices for the cost columns")
    secrets: SecretsSpec = Field(default=SecretsSpec(), description="Kubernetes Secrets for the pods")

    _check_name = field_validator("name")(classmethod(lambda cls, v: slug(v)))

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentSpec:
        errors: list[str] = []
        seen: set[str] = set()
        for i, arm in enumerate(self.arms):
            if arm.name in seen:
                errors.append(f"arms[{i}].name: duplicate arm name {arm.name!r}")
            seen.add(arm.name)
            errors += [f"arms[{i}].{e}" for e in _hosted_arm_errors(arm)]
            if arm.is_hosted:
                continue
            if arm.nodes > 1 and not (self.training.checkpoint_uri or "").startswith("s3://"):
                errors.append(f"arms[{i}].nodes: {arm.nodes} nodes need training.checkpoint_uri on s3:// (the "
                              "training pods read the data and write the adapter there)")
            errors += self._peft_errors(i, arm)
        if len(set(self.variants)) != len(self.variants):
            errors.append("variants: must be unique")
        errors += self._replicate_errors(seen)
        errors += self._batch_errors()
        errors += self._endpoint_api_errors()
        errors += pairwise_errors(self.evaluation, [arm.name for arm in self.arms], self.variants)
        if not errors:
            errors += self._secret_conflicts()
        if errors:
            raise SpecError(errors)
        return self

    def _replicate_errors(self, names: set[str]) -> list[str]:
        """Replicates run as arms named ``NAME-rI`` (I = 2 .. N): such a name must be free and a valid name."""
        errors = []
        replicated = any(self.arm_replicates(arm) > 1 for arm in self.arms)
        if replicated and "fine-tuned" not in self.variants:
            errors.append("training.replicates: replicates retrain the arm, so variants must include fine-tuned")
        for i, arm in enumerate(self.arms):
            for run in self.arm_runs(arm)[1:]:
                key = f"arms[{i}].replicates" if arm.replicates else "training.replicates"
                if run in names:
                    errors.append(f"{key}: replicate {run!r} would have the name of another arm; rename that arm")
                elif len(run) > 63:
                    errors.append(f"{key}: replicate name {run!r} is longer than 63 characters; shorten "
                                  f"arms[{i}].name")
        return errors

    def arm_replicates(self, arm: ArmSpec | str) -> int:
        """How many times ``arm`` is trained (its own ``replicates``, else ``training.replicates``)."""
        arm = self.arm(arm) if isinstance(arm, str) else arm
        return arm.replicates or self.training.replicates

    def arm_runs(self, arm: ArmSpec | str) -> list[str]:
        """The runs of ``arm``, one per replicate: its own name (replicate 1), then ``NAME-r2`` ... ``NAME-rN``."""
        arm = self.arm(arm) if isinstance(arm, str) else arm
        return [arm.name] + [f"{arm.name}-r{i}" for i in range(2, self.arm_replicates(arm) + 1)]

    def runs(self) -> list[str]:
        """Every arm's runs, in spec order: what the pipeline's tasks train, generate and score."""
        return [run for arm in self.arms for run in self.arm_runs(arm)]

    def run_of(self, run: str) -> tuple[ArmSpec, int]:
        """The arm a run belongs to and its replicate (1-based); a spec error naming the runs otherwise."""
        for arm in self.arms:
            runs = self.arm_runs(arm)
            if run in runs:
                return arm, runs.index(run) + 1
        raise SpecError(f"arms: no arm or replicate named {run!r}; they are {', '.join(self.runs())}")

    def training_seed(self, arm: ArmSpec) -> int:
        """The seed ``arm`` trains with (an arm's own ``seed``, else the experiment's)."""
        return arm.seed if arm.seed is not None else self.seed

    def run_seed(self, run: str) -> int:
        """The training seed of a run: replicate I of an arm trains with the arm's seed + I - 1."""
        arm, replicate = self.run_of(run)
        return self.training_seed(arm) + replicate - 1

    def for_run(self, run: str) -> ExperimentSpec:
        """The spec a run's stages see: ``self`` for an arm's first replicate; for replicate I of arm NAME, a spec
        whose arm ``NAME-rI`` has training seed (its seed) + I - 1 and whose only variant is fine-tuned (the base
        model's answers do not depend on the training seed: they come from replicate 1)."""
        arm, replicate = self.run_of(run)
        if replicate == 1:
            return self
        twin = arm.model_copy(update={"name": run, "seed": self.run_seed(run),
                                      "replicates": 1})
        arms = [twin if a.name == arm.name else a for a in self.arms]
        return self.model_copy(update={"arms": arms, "variants": ["fine-tuned"]})

    def _batch_errors(self) -> list[str]:
        """A training batch larger than the whole train split (given as a count) can never be filled: each step
        would hold every train row, fewer than asked for, so the number is a typo. A fraction's row count is
        known only after prepare; MAX_BATCH_SIZE bounds the batch there."""
        split, batch = self.data.split, self.training.batch_size
        if split.is_fraction or batch <= split.train or all(arm.is_hosted for arm in self.arms):
            return []
        return [f"training.batch_size: {batch} rows per step is more than the whole train split "
                f"(data.split.train: {split.train} rows); use at most {split.train}"]

    def _endpoint_api_errors(self) -> list[str]:
        """A generation endpoint's API must match the template: chat messages go with the chat template (the
        server applies it once), a text prompt with completions (a chat API would wrap it a second time)."""
        endpoint, template = self.generation.endpoint, self.data.template
        if self.generation.backend != "openai" or endpoint is None or all(a.is_hosted for a in self.arms):
            return []
        chat = template == "chat"
        if endpoint.api == "chat" and not chat:
            return [f"generation.endpoint.api: chat applies the model's chat template to the messages, but "
                    f"data.template {template if isinstance(template, str) else '(your own)'} already renders the "
                    "prompt; use api completions, or data.template chat"]
        if endpoint.api == "completions" and chat:
            return ["generation.endpoint.api: completions sends a text, but data.template chat renders the prompt "
                    "with the tokenizer's chat template; use api chat (the server applies it)"]
        return []

    def _peft_errors(self, i: int, arm: ArmSpec) -> list[str]:
        merged = merge_peft(self.peft, arm.peft)
        own = {k for k, v in arm.peft.model_dump().items() if v is not None}
        return [f"arms[{i}].peft.{key}: {message}" + ("" if key in own else f" ({key} comes from the shared peft)")
                for key, message in peft_conflicts(merged)]

    def _secret_conflicts(self) -> list[str]:
        errors = []
        for stage in STAGES:
            sources: dict[str, set[tuple[str, str]]] = {}
            for route in self.secret_routes():
                if stage in route.stages:
                    sources.setdefault(route.env, set()).add((route.ref.name, route.ref.key))
            for env, refs in sources.items():
                if len(refs) > 1:
                    errors.append(f"secrets: {env} would come from {len(refs)} Secret keys in the {stage} stage "
                                  f"({', '.join(f'{n}/{k}' for n, k in sorted(refs))}); use the same Secret key "
                                  "or another api_key_env")
        return errors

    def arm(self, name: str) -> ArmSpec:
        """The arm called ``name``; a spec error listing the arms otherwise."""
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise SpecError(f"arms: no arm named {name!r}; arms are {', '.join(a.name for a in self.arms)}")

    def arm_peft(self, arm: ArmSpec | str) -> PeftSpec:
        """The shared PEFT settings with the arm's overrides applied (validated together)."""
        arm = self.arm(arm) if isinstance(arm, str) else arm
        return merge_peft(self.peft, arm.peft)

    def arm_method(self, arm: ArmSpec | str) -> str:
        """How the arm is fine-tuned: its PEFT method, or ``hosted`` for a provider's fine-tuning job."""
        arm = self.arm(arm) if isinstance(arm, str) else arm
        return "hosted" if arm.is_hosted else self.arm_peft(arm).method

    def checkpoint_uri(self, arm: ArmSpec | str) -> str | None:
        """Where ``arm``'s checkpoints go: ``training.checkpoint_uri/<experiment>/<arm>``, or None."""
        if not self.training.checkpoint_uri:
            return None
        name = arm if isinstance(arm, str) else arm.name
        return f"{self.training.checkpoint_uri.rstrip('/')}/{self.name}/{name}"

    def secret_routes(self) -> list[SecretRoute]:
        """Every Secret key the spec names, with the variable it becomes and the stages that need it.

        HF token: prepare, finetune, generate. Judge key: prepare and generate (the judge preflight),
        evaluate. RAGAS and pairwise judge keys: evaluate. Generation endpoint key: generate. A hosted arm's key:
        finetune and generate. S3 credentials (and endpoint, if the Secret holds it): every stage.
        """
        routes = []
        s = self.secrets
        if s.hf_token:
            routes.append(SecretRoute(s.hf_token, "HF_TOKEN", ("prepare", "finetune", "generate"), "secrets.hf_token"))
        judge = self.evaluation.judge
        judge_env = judge.api_key_env if judge else "OPENAI_API_KEY"
        for ref, declared in ((s.judge_api_key, "secrets.judge_api_key"),
                              (judge.api_key_secret if judge else None, "evaluation.judge.api_key_secret")):
            if ref:
                routes.append(SecretRoute(ref, judge_env, ("prepare", "generate", "evaluate"), declared))
        if s.s3:
            keys = [(s.s3.access_key_key, "AWS_ACCESS_KEY_ID"), (s.s3.secret_key_key, "AWS_SECRET_ACCESS_KEY")]
            if s.s3.endpoint_key:
                keys.append((s.s3.endpoint_key, "S3_ENDPOINT"))
            routes += [SecretRoute(SecretRef(name=s.s3.name, key=key), env, STAGES, "secrets.s3") for key, env in keys]
        routes += self._endpoint_routes()
        return routes

    def _endpoint_routes(self) -> list[SecretRoute]:
        """The routes of the endpoints' own ``api_key_secret`` keys (RAGAS, the pairwise judge, generation endpoint,
        hosted arms)."""
        routes = []
        llm, embeddings = self.evaluation.ragas_llm(), self.evaluation.ragas_embeddings()
        ragas = self.evaluation.ragas
        if ragas and ragas.api_key_secret and llm:
            routes.append(SecretRoute(ragas.api_key_secret, llm.api_key_env, ("evaluate",),
                                      "evaluation.ragas.api_key_secret"))
        if ragas and ragas.embeddings_api_key_secret and embeddings:
            routes.append(SecretRoute(ragas.embeddings_api_key_secret, embeddings.api_key_env, ("evaluate",),
                                      "evaluation.ragas.embeddings_api_key_secret"))
        pairwise = pairwise_endpoint(self.evaluation)
        if pairwise and pairwise.api_key_secret:  # the pairwise judge runs in the evaluate stage's pods
            routes.append(SecretRoute(pairwise.api_key_secret, pairwise.api_key_env, ("evaluate",),
                                      "evaluation.pairwise.api_key_secret"))
        endpoint = self.generation.endpoint
        if endpoint and endpoint.api_key_secret:
            routes.append(SecretRoute(endpoint.api_key_secret, endpoint.api_key_env, ("generate",),
                                      "generation.endpoint.api_key_secret"))
        for i, arm in enumerate(self.arms):
            if arm.hosted and arm.hosted.api_key_secret:
                routes.append(SecretRoute(arm.hosted.api_key_secret, arm.hosted.api_key_env, ("finetune", "generate"),
                                          f"arms[{i}].hosted.api_key_secret"))
        return routes

    def to_json(self) -> str:
        """Canonical JSON (what the pipeline carries between components)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


__all__ = ["STAGES", "ArmSpec", "ExperimentSpec", "HostedFineTune", "SecretRoute"]
