"""Where an arm trains: a provider's API (hosted), a Kubeflow Trainer job (several nodes), torchrun with
one process per GPU (several GPUs in this pod), or this process. The one entry of the finetune stage.

The processes it starts run ``bakeoff.train.worker`` (never the user CLI); with DDP (or FSDP) across
them, rank 0 writes the outputs. A spec that asks for one GPU, or a machine that shows fewer GPUs than
asked, trains in this process. torchrun runs in its own session, gets SIGTERM when this process dies, and
gets this process's SIGTERM or SIGINT passed on once: its ranks save a checkpoint and stop, and the stage
raises ``Preempted``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from bakeoff.artifacts import TrainResult, read_train_result
from bakeoff.errors import Preempted, TrainingError
from bakeoff.spec import ExperimentSpec
from bakeoff.train.worker import staged, train_arm

log = logging.getLogger(__name__)


def processes_for(spec: ExperimentSpec) -> int:
    """One process per GPU the spec asks for, when that many CUDA devices are visible; else 1."""
    import torch

    gpu = spec.resources.finetune.gpu
    wanted = gpu.count if gpu else 1
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if wanted > 1 and visible < wanted:
        log.warning("resources.finetune.gpu.count is %d but %d GPU(s) are visible: training in one process",
                    wanted, visible)
        return 1
    return wanted


def finetune_arm(spec: ExperimentSpec, arm: str, data: str | Path, out: str | Path,
                 processes: int | None = None) -> TrainResult:
    """Fine-tune one arm of ``spec`` from ``data`` (the prepare output, a folder or ``s3://``) into ``out``."""
    arm_spec = spec.arm(arm)
    if "LOCAL_RANK" in os.environ and not arm_spec.is_hosted:
        raise TrainingError("this process is already a torchrun rank: run the training worker under torchrun "
                            "(torchrun --nproc_per_node=N -m bakeoff.train.worker --spec ... --arm ... --data ... "
                            "--out ...), not the finetune stage, which starts torchrun itself")
    with staged(data, out) as (data_dir, out_dir):
        if arm_spec.is_hosted:
            # a provider trains it: upload the splits, create (or attach to) the job, follow it to the end
            from bakeoff.train.hosted import finetune_hosted

            return finetune_hosted(spec, arm_spec, data_dir, out_dir)
        if arm_spec.nodes > 1:
            # several nodes: a Kubeflow Trainer job runs the worker (under torchrun) on each of them
            from bakeoff.train.trainer_job import run_multinode

            run_multinode(spec, arm, data_dir, out_dir)
            return read_train_result(out_dir)
        processes = processes_for(spec) if processes is None else processes
        if processes <= 1:
            return train_arm(spec, arm_spec, data_dir, out_dir)
        return _torchrun(spec, arm, processes, data_dir, out_dir)


# Run the rest of the command line with SIGTERM as its parent-death signal (Linux), unless the parent is gone.
_DIES_WITH_PARENT = """import ctypes, os, signal, sys
prctl = getattr(ctypes.CDLL(None), "prctl", None)
if prctl is not None:
    prctl(1, int(signal.SIGTERM))
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


@contextlib.contextmanager
def _passing_stop_signals(proc: subprocess.Popen) -> Iterator[dict[str, str | None]]:
    """While ``proc`` (torchrun) runs: pass this process's first SIGTERM or SIGINT on to it as SIGTERM (its
    ranks save a checkpoint and stop); a second SIGINT kills it. Yields what was received."""
    got: dict[str, str | None] = {"signal": None}

    def handler(signum, frame):
        if got["signal"] is None:
            got["signal"] = signal.Signals(signum).name
            proc.send_signal(signal.SIGTERM)
        elif signum == signal.SIGINT:
            proc.kill()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield got
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _torchrun(spec: ExperimentSpec, arm: str, processes: int, data_dir: Path, out_dir: Path) -> TrainResult:
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "spec.json"  # JSON is YAML: the worker loads it as any spec
        spec_file.write_text(spec.to_json())
        cmd = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "bakeoff.train.worker", "--spec", str(spec_file), "--arm", arm, "--data", str(data_dir),
               "--out", str(out_dir)]
        log.info("training %s on %d processes: %s", arm, processes, " ".join([sys.executable, *cmd]))
        # its own session: a Ctrl-C in the terminal reaches torchrun once, passed on by this process
        proc = subprocess.Popen([sys.executable, "-c", _DIES_WITH_PARENT, str(os.getpid()), *cmd],
                                start_new_session=True)
        with _passing_stop_signals(proc) as got:
            code = proc.wait()
    if got["signal"] is not None:
        kept = spec.checkpoint_uri(arm)
        exc = Preempted(f"arm {arm}: stopped by {got['signal']}; the {processes} training processes saved a "
                        f"checkpoint{f' under {kept}' if kept else ''} and a rerun resumes from it")
        exc.saved = {"arm": arm, "step": None, "checkpoint": kept, "kept": kept is not None}
        raise exc
    if code != 0:
        raise TrainingError(f"arm {arm}: the {processes}-process training run failed (exit {code}); "
                            "its log above says why")
    return read_train_result(out_dir)


__all__ = ["finetune_arm", "processes_for"]
