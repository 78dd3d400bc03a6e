"""Resolve a model URI to something ``from_pretrained`` takes, and load it safely.

Models load from safetensors only; ``trust_remote_code`` stays off unless the arm turns it on.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from bakeoff.errors import ModelError, SpecError, StorageError
from bakeoff.storage import atomic_dir, cache_root, download_s3_prefix, parse_hf_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedModel:
    """What to pass to ``from_pretrained``: a local folder or a Hub id, plus keyword arguments."""

    uri: str
    path: str
    kwargs: dict = field(default_factory=dict)


def resolve_model(uri: str) -> ResolvedModel:
    """Map ``tiny://``, ``hf://``, ``s3://`` or a local path to a loadable location."""
    if uri.startswith("tiny://"):
        from bakeoff.models.tiny import BUILD_VERSION, build_tiny_model

        family = uri[len("tiny://"):]
        final = cache_root() / "models" / f"tiny-{family}-v{BUILD_VERSION}"
        path = atomic_dir(final, lambda tmp: build_tiny_model(family, tmp))
        return ResolvedModel(uri, str(path))
    return resolve_remote(uri)


def resolve_remote(uri: str) -> ResolvedModel:
    """Map ``hf://``, ``s3://`` or a local path (any model but ``tiny://``) to a loadable location."""
    if uri.startswith("hf://"):
        try:
            ref = parse_hf_uri(uri)
        except StorageError as exc:
            raise ModelError(str(exc)) from exc
        return ResolvedModel(uri, ref.repo_id, {"revision": ref.revision} if ref.revision else {})
    if uri.startswith("s3://"):
        digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
        final = cache_root() / "models" / f"s3-{digest}"
        try:
            path = atomic_dir(final, lambda tmp: download_s3_prefix(uri, tmp))
        except StorageError as exc:
            raise ModelError(f"model {uri}: {exc}") from exc
        return ResolvedModel(uri, str(path))
    if "://" in uri:
        raise ModelError(
            f"model {uri}: unknown scheme; use hf://org/name[@rev], s3://bucket/key, tiny://FAMILY or a path"
        )
    path = Path(uri)
    if not (path / "config.json").is_file():
        raise ModelError(f"model {uri}: no config.json in this folder (expected a saved Hugging Face model)")
    return ResolvedModel(uri, str(path.resolve()))


def _load_error(uri: str, exc: Exception) -> ModelError:
    hint = ""
    if uri.startswith("hf://"):
        hint = (" (the Hugging Face Hub may be unreachable or need HF_TOKEN: mirror the model to s3:// or a "
                "local path, or set HF_TOKEN for gated models)")
    return ModelError(f"model {uri}: cannot be loaded: {exc}{hint}")


def _tokenizer_source(uri: str) -> ResolvedModel:
    """Where a model's tokenizer loads from: for ``tiny://`` its tokenizer alone, built without the model (a
    stage that only counts tokens needs no torch); otherwise the model's own location."""
    if uri.startswith("tiny://"):
        from bakeoff.models.tiny import BUILD_VERSION, build_tiny_tokenizer

        family = uri[len("tiny://"):]
        final = cache_root() / "models" / f"tiny-{family}-tokenizer-v{BUILD_VERSION}"
        return ResolvedModel(uri, str(atomic_dir(final, lambda tmp: build_tiny_tokenizer(family, tmp))))
    return resolve_remote(uri)


def load_tokenizer(uri: str, trust_remote_code: bool = False):
    """The tokenizer of a model URI, with a pad token (end-of-sequence if the model has none)."""
    from transformers import AutoTokenizer

    resolved = _tokenizer_source(uri)
    try:
        tok = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code, **resolved.kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors...
        raise _load_error(uri, exc) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(uri: str, dtype=None, trust_remote_code: bool = False, device: str | None = None,
               quantization_config=None, device_map: str | dict | None = None):
    """A causal LM from safetensors weights, in ``dtype`` (float32 by default), on ``device``.

    With a ``quantization_config`` (4-bit for QLoRA) the weights are quantized as they load, on ``device``.
    ``device_map`` (e.g. ``auto``: the layers spread over every visible GPU) replaces ``device``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(uri)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved.path,
            dtype=dtype or torch.float32,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            **({"quantization_config": quantization_config} if quantization_config is not None else {}),
            **({"device_map": device_map} if device_map is not None else
               {"device_map": {"": device or "cpu"}} if quantization_config is not None else {}),
            **resolved.kwargs,
        )
    except Exception as exc:
        raise _load_error(uri, exc) from exc
    if device and quantization_config is None and device_map is None:
        model.to(device)
    return model


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on CPU (training and
    generation alike)."""
    import torch

    if precision != "auto":
        if device == "cpu" and precision == "fp16":
            raise SpecError("training.precision: fp16 needs a CUDA device; use fp32 or auto on CPU")
        return precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def torch_dtype(precision: str):
    """The torch dtype of a resolved precision."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def pick_device() -> str:
    """``cuda`` when a CUDA GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def quantization_config(compute_dtype, quant_storage=None):
    """4-bit NF4 with double quantization (QLoRA): how a QLoRA arm's base is loaded, for training and for
    generating with its adapter. ``quant_storage`` (the compute dtype) lets FSDP shard the 4-bit weights."""
    from transformers import BitsAndBytesConfig

    extra = {"bnb_4bit_quant_storage": quant_storage} if quant_storage is not None else {}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype, **extra)
