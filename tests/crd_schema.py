"""Validate an object against a CustomResourceDefinition's schema the way the API server does, strictly.

The API server prunes fields a structural schema does not declare (silently with the default
``fieldValidation=Warn``, as an error with ``Strict``); here every such field is an error, named by its
path. What is checked: the OpenAPI v3 schema of the CRD's served version (types, required, enums, sizes,
patterns, minimum), with Kubernetes' extensions: ``x-kubernetes-preserve-unknown-fields`` (anything
goes below), ``x-kubernetes-int-or-string``, ``nullable``. The object's top-level ``metadata`` is the
API server's ObjectMeta (not in CRD schemas); CEL rules (``x-kubernetes-validations``) are not run.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import yaml
from jsonschema import Draft4Validator

HERE = Path(__file__).resolve().parent / "contracts"


def load_crd(name: str) -> dict:
    path = HERE / name
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    return yaml.safe_load(text)


def served_schema(crd: dict, version: str) -> dict:
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version and entry.get("served", True):
            return entry["schema"]["openAPIV3Schema"]
    raise KeyError(f"{crd['metadata']['name']} serves no version {version}")


def strict(node: dict, top: bool = True) -> dict:
    """The JSON Schema (draft 4, as OpenAPI v3.0) that refuses every field ``node`` does not declare."""
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-") and k not in ("nullable",)}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in node:
        out["properties"] = {k: strict(v, False) for k, v in node["properties"].items()}
        if top and "metadata" in out["properties"]:
            out["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: the API server's own
    if "items" in node:
        out["items"] = strict(node["items"], False)
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(node["additionalProperties"], False)
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            out[key] = [strict(v, False) for v in node[key]]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if node.get("type") == "object" and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def violations(obj: dict, crd: dict, version: str) -> list[str]:
    """One line per problem: the field's path and what is wrong (an unknown field is named as such)."""
    validator = Draft4Validator(strict(served_schema(crd, version)))
    lines = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(p) for p in err.absolute_path) or "<root>"
        if err.validator == "additionalProperties" and err.validator_value is False:
            declared = set(err.schema.get("properties", {}))
            unknown = sorted(set(err.instance) - declared)
            lines += [f"{path}.{name}: unknown field" if path != "<root>" else f"{name}: unknown field"
                      for name in unknown]
        else:
            lines.append(f"{path}: {err.message}")
    return lines


# --- the Kubeflow Trainer webhook's rules for a TrainJob (v2.2.1 and v2.3.0 alike) ---------------------
# From pkg/runtime/framework/plugins/jobset/jobset.go (Validate) and plugins/torch/torch.go (Validate) at
# the commits in contracts/README.md; the messages are the webhook's own.
TORCH_RESERVED_ENV = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
ENV_ONLY_THROUGH_TRAINER = {"dataset-initializer", "model-initializer", "node"}
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HTTP_PATH = re.compile(r"^[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")


def is_domain_prefixed_path(value: str) -> bool:
    """apimachinery's validation.IsDomainPrefixedPath: ``host/path``, host a DNS-1123 subdomain."""
    host, _, path = value.partition("/")
    return bool(host and path and len(host) <= 253 and _DNS1123_SUBDOMAIN.match(host) and _HTTP_PATH.match(path))


def runtime_containers(runtime: dict) -> dict[str, set[str]]:
    """replicated job name -> its containers' names, from a (Cluster)TrainingRuntime."""
    jobs = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    return {job["name"]: {c["name"] for c in job["template"]["spec"]["template"]["spec"].get("containers", [])}
            for job in jobs}


def webhook_denials(trainjob: dict, runtime: dict) -> list[str]:
    """What the Trainer's validating webhook would refuse in ``trainjob`` against ``runtime``."""
    out = []
    spec = trainjob["spec"]
    containers = runtime_containers(runtime)
    for env in (spec.get("trainer") or {}).get("env") or []:
        if env["name"] in TORCH_RESERVED_ENV:
            out.append(f"spec.trainer.env: must not have reserved envs, invalid envs configured: [{env['name']}]")
    for i, patch in enumerate(spec.get("runtimePatches") or []):
        where = f"spec.runtimePatches[{i}]"
        if not is_domain_prefixed_path(patch.get("manager", "")):
            out.append(f'{where}.manager: Invalid value: "{patch.get("manager")}": must be a domain-prefixed path '
                       '(such as "acme.io/foo")')
        jobs = (((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {})
        for job in jobs.get("replicatedJobs") or []:
            if job["name"] not in containers:
                out.append(f"{where}: must not have replicated job that doesn't exist in the runtime job template")
                continue
            pod = (((job.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                if container["name"] not in containers[job["name"]]:
                    out.append(f"{where}: must not have container that doesn't exist in the runtime job {job['name']}")
                elif container.get("env") and container["name"] in ENV_ONLY_THROUGH_TRAINER:
                    out.append(f"{where}: must not have envs for the dataset-initializer, model-initializer, node "
                               "containers")
    return out
