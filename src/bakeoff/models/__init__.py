"""Model resolution and loading: Hub ids, S3, local folders and tiny models built from a config."""

from bakeoff.models.loading import load_model, load_tokenizer, pick_device, quantization_config, resolve_model

__all__ = ["load_model", "load_tokenizer", "pick_device", "quantization_config", "resolve_model"]
