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


def exit_code(exc: BaseException, stream=None, debug: bool = False) -> int:
    """Print ``exc`` the way an entry point shows an error and return the exit status: 2 for an invalid spec
    (one line per error, naming the key path), 130 for an interrupt, 1 for anything else.

    An error bakeoff raises, or one of the operating system (a file that cannot be read or written), is one
    line without a traceback; anything else is unexpected (a bug) and says so in one line. With ``debug`` the
    traceback is printed first, whatever the error.
    """
    import sys
    import traceback

    stream = stream or sys.stderr
    if debug:
        traceback.print_exception(exc, file=stream)
    if isinstance(exc, SpecError):
        where = f"{exc.source}: " if exc.source else ""
        for message in exc.messages:
            print(f"{where}{message}", file=stream)
        return 2
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted", file=stream)
        return 130
    if isinstance(exc, BakeoffError):
        print(f"error: {exc}", file=stream)
    elif isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=stream)
    else:
        hint = "" if debug else "; rerun with --debug for the traceback"
        text = " ".join(str(exc).split()) or "(no message)"
        print(f"error: unexpected {type(exc).__name__}: {text} (bakeoff did not expect this{hint})", file=stream)
    return 1


_HANDLERS: list = []  # the one log handler an entry point added (log_to_stderr), replaced on its next call


def log_to_stderr(level: int) -> None:
    """An entry point's logging: one handler of bakeoff's own on the root logger, writing to the current
    stderr at ``level``, replaced on each call. A second entry point in one process (as in tests, where each
    test has its own stderr) must not log to an earlier, closed stderr; other handlers are left alone."""
    import logging
    import sys

    root = logging.getLogger()
    for handler in _HANDLERS:
        root.removeHandler(handler)
    for handler in list(root.handlers):  # another library's handler on a stream closed since (kfp.local's)
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _HANDLERS[:] = [handler]
    root.addHandler(handler)
    root.setLevel(level)
