"""bakeoff: fine-tune several LLMs the same way, evaluate each beside its base model, compare."""

__version__ = "0.1.0"
