"""Typed errors, caught at the entry points (CLI, components) and shown as one clear message."""


class BakeoffError(Exception):
    """Base class of every error bakeoff raises on purpose."""


class SpecError(BakeoffError):
    """An experiment spec is invalid; each message names the key path (``arms[1].peft.r: ...``)."""

    def __init__(self, messages: list[str] | str, source: str | None = None):
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(self.messages))


class DataError(BakeoffError):
    """Input data is malformed or unusable; the message names file, row and field."""


class ModelError(BakeoffError):
    """A model or adapter cannot be resolved or loaded."""


class StorageError(BakeoffError):
    """An artifact location (local path, s3://, hf://) cannot be read or written."""


class EvaluationError(BakeoffError):
    """Evaluation cannot run at all (for example an unreachable judge endpoint)."""


class TrainingError(BakeoffError):
    """Training cannot go on (out of memory, a method the device cannot run); the message says what to change."""


class Preempted(BakeoffError):
    """The stage got SIGTERM and saved a checkpoint; a rerun resumes from it."""
