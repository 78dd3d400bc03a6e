"""``make gpu-check``: on one CUDA GPU, the ``gpu``-marked tests and the GPU benchmark in under 8 minutes.

Run: make gpu-check   (or: python bench/gpu_check.py [--parts a,b] [--deadline S] [--dry-run])
Four parts, each a child process with a time budget, inside one global deadline (``--deadline``, 465 s): an
early part's unused time passes to the later ones; a part that runs out is stopped (SIGINT, then its whole
process group) and recorded as "timed out" with what it measured until then; a part the deadline leaves no
time for is recorded as "timed out" too, never dropped.
- ``throughput``: bench/bench_gpu.py --part throughput (a ~1B Llama from a config, seq len 1024: padded to
  1024, plain TRL with dynamic padding, the stage's defaults, padding-free, packing: real tokens/s, MFU, peak
  memory beside the planner's estimate, loss curves, the defaults' speed-up over plain TRL);
- ``tests``: pytest -m gpu tests/test_gpu_paths.py (each test's outcome);
- ``methods``: QLoRA (trained, saved, reloaded, generating) and full fine-tuning on the 1B model;
- ``generation``: transformers batched bf16 vs sequential, vLLM with LoRA adapters vs transformers (when
  vllm imports; else "not installed").
Writes bench/results/gpu-latest.json (GPU, library versions, every part's status and figures;
``throughput.defaults.mfu`` is what ``bakeoff.capacity.plan.assumed_mfu`` reads) and gpu-latest.md (the
table it prints at the end), and gpu-latest.log (each part's output). Exits 1 when a part failed or timed out.

Without CUDA it runs what needs none: the arguments, the dry run (what it would run, with the budgets), the
JSON and the table with ``"cuda": false``, every GPU part "skipped"; and exits 0. It never replaces a file
recorded on a GPU: it then writes gpu-latest.nocuda.json beside it. ``--check-wheels DIR`` checks that every
requirement of the wheels in DIR is carried there or installed on the lent GPU machine (bench/gpu_wheels.sh).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "gpu-latest.json"
GPU_TESTS = "tests/test_gpu_paths.py"
DEADLINE_S = 465  # 7 min 45 s: the device run's limit (timeout_s 560) keeps room for the install and the copy
LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "liger-kernel", "vllm",
             "datasets", "pydantic")
IMPORTS = {"trl": "trl", "bitsandbytes": "bitsandbytes", "liger-kernel": "liger_kernel", "datasets": "datasets",
           "peft": "peft", "accelerate": "accelerate", "pydantic": "pydantic", "bakeoff": "bakeoff"}
STATUSES = ("ok", "failed", "timed out", "skipped")


@dataclass(frozen=True)
class Part:
    name: str
    budget_s: float
    what: str


PARTS = (
    Part("throughput", 160, "bench_gpu --part throughput: ~1B Llama, seq len 1024, LoRA: padded to 1024, plain TRL "
         "(dynamic padding), stage defaults, padding-free, packing: real tokens/s, MFU, peak memory vs plan, loss"),
    Part("tests", 110, f"pytest -m gpu {GPU_TESTS}: QLoRA round trip, LoRA and full bf16, LoftQ, IA3/DoRA "
         "routed to transformers, vLLM adapters (rank_pattern too) when vllm imports"),
    Part("methods", 100, "bench_gpu --part methods: QLoRA NF4 (train, save, reload, generate) and full (fp32 "
         "master weights, bf16 autocast) on the 1B: tokens/s, MFU, peak memory vs plan"),
    Part("generation", 70, "bench_gpu --part generation: transformers batched bf16 vs sequential; vLLM with two "
         "LoRA adapters (one with rank_pattern) vs transformers batched, greedy answers compared"),
)
PART_NAMES = tuple(p.name for p in PARTS)

# The Python packages the lent GPU machine (nvidia-h200, image 'cuda') has, as its notes list them: a wheel's
# requirement must be one of these or be carried beside it (``--check-wheels``).
GPU_MACHINE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio interface-meta iniconfig jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split())


# --------------------------------------------------------------------------------------------------------------
# What is here


def versions() -> dict[str, str]:
    """Each library's installed version, or "not installed"; bakeoff as imported (the working tree's src/)."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        import bakeoff

        out["bakeoff"] = f"{bakeoff.__version__} ({Path(bakeoff.__file__).parent})"
    except ImportError:
        out["bakeoff"] = "not installed"
    out["python"] = platform.python_version()
    return out


def import_checks(modules: dict[str, str] = IMPORTS) -> dict[str, str]:
    """Whether each module imports here: "ok", "not installed" or the error's first line."""
    import importlib

    out = {}
    for name, module in modules.items():
        try:
            importlib.import_module(module)
            out[name] = "ok"
        except ModuleNotFoundError as exc:
            out[name] = "not installed" if exc.name == module.split(".")[0] else f"error: {exc}"
        except Exception as exc:  # a broken install: the part that needs it reports it again
            out[name] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return out


def gpu_facts() -> dict:
    """cuda (bool), and with a GPU its name, memory, capability, the CUDA runtime and the bf16 peak."""
    try:
        import torch
    except ImportError:
        return {"cuda": False, "gpu": None, "why": "torch is not installed"}
    if not torch.cuda.is_available():
        return {"cuda": False, "gpu": None, "why": "torch sees no CUDA GPU", "torch_cuda": torch.version.cuda}
    from bakeoff.train.flops import peak_tflops

    props = torch.cuda.get_device_properties(0)
    return {"cuda": True, "gpu": props.name, "gpu_memory_gb": round(props.total_memory / 1e9, 1),
            "capability": f"{props.major}.{props.minor}", "gpu_count": torch.cuda.device_count(),
            "torch_cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported(),
            "peak_bf16_tflops": peak_tflops(props.name)}


def gpu_test_names(path: Path = ROOT / GPU_TESTS) -> list[str]:
    """The test functions of the gpu test module (read with ast: nothing is imported)."""
    tree = ast.parse(path.read_text())
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]


# --------------------------------------------------------------------------------------------------------------
# Running the parts


def command(part: str, work: Path, bench_args: list[str] = ()) -> list[str]:
    """The child process of a part."""
    if part == "tests":
        return [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider",
                f"--junitxml={work / 'tests.xml'}", GPU_TESTS]
    return [sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--part", part, "--work", str(work),
            "--out", str(work / f"{part}.json"), *bench_args]


def child_env(work: Path) -> dict[str, str]:
    """The working tree's src/ first on the path (never a stale installed copy), offline, unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    env.setdefault("BAKEOFF_CACHE", str(work / "cache"))
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", HF_DATASETS_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    return env


def allowance(budget: float, remaining: float, later_budgets: float) -> float:
    """A part's time: its budget, or more when the later parts' budgets leave more, never past the deadline."""
    return max(0.0, min(remaining, max(budget, remaining - later_budgets)))


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGINT first (pytest then writes its report, a bench part keeps what it wrote), then the group's end."""
    for sig, wait in ((signal.SIGINT, grace_s), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_command(cmd: list[str], timeout_s: float, log: Path, env: dict[str, str] | None = None,
                grace_s: float = 10.0) -> dict:
    """Run ``cmd`` in its own process group, output to ``log``; status ok, failed or timed out. The grace
    after SIGINT is inside ``timeout_s`` (a quarter of it at most), so the global deadline holds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    grace = min(grace_s, timeout_s / 4)
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = proc.wait(timeout=max(timeout_s - grace, 0.01))
            status = "ok" if returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            stop_group(proc, grace)
            returncode, status = proc.returncode, "timed out"
    return {"status": status, "returncode": returncode, "seconds": round(time.monotonic() - started, 1),
            "log_tail": tail(log) if status != "ok" else ""}


PROGRESS = re.compile(r"it/s\]|examples/s\]|s/it\]|\|[ \u2588-\u258f]+\|")


def tail(path: Path, chars: int = 3000, progress: bool = False) -> str:
    """The end of a log, without progress-bar lines (unless ``progress``)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    if not progress:
        text = "\n".join(line for line in text.replace("\r", "\n").splitlines() if not PROGRESS.search(line))
    return text[-chars:]


def run_parts(parts: list[Part], work: Path, deadline_at: float, bench_args: list[str] = (),
              runner=run_command, clock=time.monotonic) -> dict[str, dict]:
    """Each part in turn within the global deadline; one the deadline leaves no time for is "timed out"."""
    env, out = child_env(work), {}
    for i, part in enumerate(parts):
        remaining = deadline_at - clock()
        allowed = allowance(part.budget_s, remaining, sum(p.budget_s for p in parts[i + 1:]))
        if allowed < 1.0:
            out[part.name] = {"status": "timed out", "budget_s": part.budget_s, "allowed_s": 0.0, "seconds": 0.0,
                              "note": "not started: the global deadline was reached"}
            continue
        for stale in (work / f"{part.name}.json", work / "tests.xml" if part.name == "tests" else None):
            if stale is not None:
                stale.unlink(missing_ok=True)  # a part reports only what this run of it wrote
        print(f"gpu-check: {part.name}: up to {allowed:.0f} s (budget {part.budget_s:.0f} s)", flush=True)
        result = runner(command(part.name, work, bench_args), allowed, work / "logs" / f"{part.name}.log", env)
        out[part.name] = {**result, "budget_s": part.budget_s, "allowed_s": round(allowed, 1)}
        print(f"gpu-check: {part.name}: {result['status']} in {result['seconds']:.0f} s", flush=True)
    return out


# --------------------------------------------------------------------------------------------------------------
# Reading what the parts wrote


def test_outcomes(work: Path, names: list[str], status: str) -> dict[str, dict]:
    """Each gpu test's outcome: from pytest's JUnit XML, else from its -v log lines; a test neither names is
    "not run" (with the part's status: a timed-out part's remaining tests are "not run (timed out)")."""
    found: dict[str, dict] = {}
    report = work / "tests.xml"
    if report.exists():
        try:
            for case in ET.parse(report).getroot().iter("testcase"):
                found[case.get("name", "")] = _junit_outcome(case)
        except ET.ParseError:
            pass
    if not found:
        log = tail(work / "logs" / "tests.log", 200_000)
        for name, outcome in re.findall(r"::(test_\w+(?:\[[^\]]*\])?) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", log):
            found[name] = {"outcome": outcome.lower()}
    missing = "not run (timed out)" if status == "timed out" else "not run"
    out: dict[str, dict] = {}
    for name in names:  # a parametrized test: one entry per case, test_x[case]
        cases = {k: v for k, v in found.items() if k == name or k.startswith(name + "[")}
        out.update(cases or {name: {"outcome": missing}})
    return out | {k: v for k, v in found.items() if k not in out}


def _junit_outcome(case) -> dict:
    seconds = round(float(case.get("time", 0) or 0), 2)
    for tag, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        node = case.find(tag)
        if node is not None:
            return {"outcome": outcome, "seconds": seconds, "message": (node.get("message") or "")[:500]}
    return {"outcome": "passed", "seconds": seconds}


def read_part(work: Path, name: str) -> dict:
    try:
        return json.loads((work / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------------------------------------------
# The results, the JSON and the table


def skeleton(facts: dict, deadline_s: float) -> dict:
    """The results before any part: ``throughput.defaults.mfu`` is there (null) whatever happens later."""
    return {"schema": 1, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), **facts, "versions": versions(), "deadline_s": deadline_s, "elapsed_s": None,
            "parts": {}, "tests": {"outcomes": {}, "counts": {}}, "throughput": {"defaults": {"mfu": None}},
            "methods": {}, "generation": {}}


def skipped(results: dict, why: str) -> dict:
    for part in PARTS:
        results["parts"][part.name] = {"status": "skipped", "budget_s": part.budget_s, "note": why}
    results["tests"]["outcomes"] = {name: {"outcome": "skipped", "message": why} for name in gpu_test_names()}
    results["tests"]["counts"] = count_outcomes(results["tests"]["outcomes"])
    return results


def count_outcomes(outcomes: dict[str, dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes.values():
        counts[o["outcome"]] = counts.get(o["outcome"], 0) + 1
    return counts


def collect(results: dict, statuses: dict[str, dict], work: Path) -> dict:
    """The parts' statuses and figures into the results (a timed-out part keeps what it had written)."""
    for name, status in statuses.items():
        results["parts"][name] = status
        if status.get("allowed_s") == 0.0:  # not started: the parts before it used the time
            if name == "tests":
                outcomes = {n: {"outcome": "not run (timed out)"} for n in gpu_test_names()}
                results["tests"] = {"outcomes": outcomes, "counts": count_outcomes(outcomes)}
            continue
        if name == "tests":
            outcomes = test_outcomes(work, gpu_test_names(), status["status"])
            results["tests"] = {"outcomes": outcomes, "counts": count_outcomes(outcomes)}
            continue
        figures = read_part(work, name)
        if figures:
            results[name] = {**figures, "partial": status["status"] != "ok"}
    results["throughput"].setdefault("defaults", {}).setdefault("mfu", None)
    return results


def _fmt(value, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and spec:
        return format(value, spec)
    return str(value)


def md_table(headers: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]


def training_rows(figures: dict, names: dict[str, str]) -> list[list]:
    rows = []
    for key, label in names.items():
        f = figures.get(key)
        if not isinstance(f, dict) or "tokens_per_second" not in f:
            continue
        rows.append([label, _fmt(f.get("tokens_per_second"), ".0f"), _fmt(f.get("mfu"), ".3f"),
                     _fmt(f.get("peak_memory_gb"), ".2f"), _fmt(f.get("planned_memory_gb"), ".2f"),
                     _fmt(f.get("final_train_loss"), ".4f")])
    return rows


THROUGHPUT_ROWS = {"naive_padded": "plain TRL, padded to the sequence length",
                   "trl_dynamic_padding": "plain TRL, dynamic padding", "defaults": "stage defaults",
                   "padding_free": "stage, padding-free", "packing": "stage, packing"}
TRAIN_HEADERS = ["run", "real tokens/s", "MFU", "peak GB", "plan GB", "final train loss"]


def table(results: dict) -> str:
    """The short text table (markdown) printed at the end and saved beside the JSON."""
    lines = [f"# GPU check: {results.get('gpu') or 'no CUDA GPU'} ({results['created']})", "",
             f"cuda: {str(results['cuda']).lower()}; elapsed {_fmt(results.get('elapsed_s'))} s of "
             f"{results['deadline_s']} s", "",
             "versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()), ""]
    lines += md_table(["part", "status", "seconds", "allowed s", "note"],
                      [[name, p.get("status"), p.get("seconds"), p.get("allowed_s"), p.get("note", "")]
                       for name, p in results["parts"].items()]) + [""]
    outcomes = results["tests"]["outcomes"]
    lines += md_table(["gpu test", "outcome"], [[n, o["outcome"]] for n, o in outcomes.items()]) + [""]
    thr = results["throughput"]
    if training_rows(thr, THROUGHPUT_ROWS):
        lines += [f"throughput: LoRA, {thr.get('model', '')}, seq len {thr.get('seq_len')}, batch "
                  f"{thr.get('batch_size')}, {thr.get('steps')} steps ({thr.get('warmup_steps')} warm-up), "
                  f"data {thr.get('data')}", ""]
        lines += md_table(TRAIN_HEADERS, training_rows(thr, THROUGHPUT_ROWS)) + [""]
        lines += [f"speed-up of the stage defaults over plain TRL (dynamic padding), side by side: "
                  f"{_fmt(thr.get('speedup_defaults_vs_trl'))}x; over padding to the sequence length: "
                  f"{_fmt(thr.get('speedup_defaults_vs_naive'))}x; train-loss curves differ by at most "
                  f"{_fmt(thr.get('loss_max_relative_difference_defaults_vs_trl'))} (relative)", ""]
    lines += _methods_lines(results) + _generation_lines(results.get("generation") or {})
    return "\n".join(lines).rstrip() + "\n"


def _methods_lines(results: dict) -> list[str]:
    methods = {**results.get("methods", {}), "lora": results["throughput"].get("defaults")}
    rows = training_rows(methods, {"lora": "LoRA (stage defaults)", "qlora": "QLoRA NF4", "full": "full"})
    if not rows:
        return []
    lines = md_table(["method", *TRAIN_HEADERS[1:]], rows) + [""]
    trip = results.get("methods", {}).get("qlora_round_trip")
    if trip:
        lines += [f"QLoRA round trip: adapter saved ({', '.join(trip.get('saved', [])) or 'nothing'}), reloaded "
                  f"on its 4-bit base, {trip.get('answers')} answers on {trip.get('device')} with "
                  f"{trip.get('backend')} in {trip.get('precision')}, {trip.get('seconds')} s", ""]
    return lines


def _generation_lines(gen: dict) -> list[str]:
    lines = []
    tf = gen.get("transformers")
    if tf:
        lines.append(f"generation ({tf['prompts']} prompts, {tf['new_tokens']} new tokens, {tf['dtype']}): "
                     f"batched {tf['batched_seconds']} s vs sequential {tf['sequential_seconds']} s "
                     f"({_fmt(tf.get('speedup_batched_vs_sequential'))}x), answers equal "
                     f"{_fmt(tf.get('answers_equal'))}")
    vllm = gen.get("vllm")
    if vllm and vllm.get("status") == "ran":
        for name, a in vllm["adapters"].items():
            lines.append(f"vLLM {name}: {a['vllm_seconds']} s vs transformers batched "
                         f"{a['transformers_batched_seconds']} s ({_fmt(a['speedup_vllm_vs_transformers'])}x), "
                         f"answers equal {a['answers_equal']}")
    elif vllm:
        lines.append(f"vLLM: {vllm.get('status')}: {vllm.get('note', '')}")
    return lines + [""] if lines else []


def write(results: dict, out: Path) -> tuple[Path, Path]:
    """gpu-latest.json and gpu-latest.md; a run without CUDA never replaces one recorded on a GPU."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if not results["cuda"] and out.exists():
        try:
            if json.loads(out.read_text()).get("cuda"):
                out = out.with_name(out.stem + ".nocuda.json")
        except (OSError, ValueError):
            pass
    md = out.with_suffix(".md")
    for path, text in ((out, json.dumps(results, indent=2) + "\n"), (md, table(results))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return out, md


def save_logs(work: Path, out: Path, parts: list[str]) -> Path:
    """Every part's output, one after another, into gpu-latest.log beside the JSON."""
    log = out.with_suffix(".log")
    chunks = [f"===== {name}\n{tail(work / 'logs' / f'{name}.log', 2_000_000)}\n" for name in parts]
    log.write_text("".join(chunks))
    return log


# --------------------------------------------------------------------------------------------------------------
# The wheels for the GPU machine


def check_wheels(folder: Path, python: str = "3.12") -> list[str]:
    """Requirements of the wheels in ``folder`` (extras aside, markers for Linux x86-64 and ``python``) that
    are neither carried there nor installed on the lent GPU machine."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    wheels = sorted(folder.glob("*.whl"))
    carried = {canonicalize_name(w.name.split("-")[0]) for w in wheels}
    have = carried | {canonicalize_name(n) for n in GPU_MACHINE_PACKAGES}
    problems = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            lines = zf.read(meta).decode().splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if canonicalize_name(req.name) not in have:
                problems.append(f"{wheel.name}: needs {req} (neither carried nor on the GPU machine)")
    return problems


# --------------------------------------------------------------------------------------------------------------
# The entry point


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PART_NAMES),
                        help=f"comma-separated, in this order: {','.join(PART_NAMES)} (default: all)")
    parser.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds for everything (default 465)")
    parser.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS",
                        help="replace a part's budget (repeatable)")
    parser.add_argument("--bench-args", default="", help="extra arguments for bench_gpu.py, e.g. '--steps 30'")
    parser.add_argument("--out", default=str(RESULTS), help="the JSON (the table and the log go beside it)")
    parser.add_argument("--work", default=None, help="model, data, logs (default: a temp dir, removed after)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the parts not run from the GPU results already in --out (a rerun of some)")
    parser.add_argument("--dry-run", action="store_true", help="print what would run, with the budgets; run nothing")
    parser.add_argument("--check-wheels", metavar="DIR", help="check the wheels in DIR for the GPU machine; exit")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = [n for n in names if n not in PART_NAMES]
    if unknown or not names:
        parser.error(f"--parts: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(PART_NAMES)}")
    budgets = {}
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in PART_NAMES or not re.fullmatch(r"\d+(\.\d+)?", seconds):
            parser.error(f"--budget {item!r}: expected PART=SECONDS with PART one of {', '.join(PART_NAMES)}")
        budgets[name] = float(seconds)
    if args.deadline <= 0:
        parser.error("--deadline must be positive")
    args.selected = [Part(p.name, budgets.get(p.name, p.budget_s), p.what) for p in PARTS if p.name in names]
    args.bench_args = shlex.split(args.bench_args)
    return args


def dry_run(args, work: Path | str = "WORK") -> list[str]:
    """What the script would run: each part, its budget and its command."""
    lines = [f"gpu-check plan: {len(args.selected)} parts within {args.deadline:.0f} s; results to {args.out} "
             f"(and {Path(args.out).with_suffix('.md').name}, {Path(args.out).with_suffix('.log').name})"]
    for part in args.selected:
        cmd = " ".join(shlex.quote(c) for c in command(part.name, Path(work), args.bench_args))
        lines.append(f"  {part.name:<10} budget {part.budget_s:>4.0f} s  {part.what}")
        lines.append(f"  {'':<10} $ {cmd}")
    lines.append(f"  gpu tests: {', '.join(gpu_test_names())}")
    return lines


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))  # the working tree's bakeoff, as the parts get it
    if args.check_wheels:
        problems = check_wheels(Path(args.check_wheels))
        print("\n".join(problems) or f"wheels in {args.check_wheels}: every requirement is carried or on the GPU "
                                     "machine")
        return 1 if problems else 0
    print("\n".join(dry_run(args)), flush=True)
    if args.dry_run:
        return 0
    facts = gpu_facts()
    out = Path(args.out)
    if not facts["cuda"]:
        results = skipped(skeleton(facts, args.deadline), f"no CUDA GPU here ({facts['why']})")
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        json_path, md_path = write(results, out)
        print(table(results))
        print(f"gpu-check: CUDA is not available ({facts['why']}): the GPU parts are skipped; wrote {json_path} "
              f"and {md_path} with \"cuda\": false")
        return 0
    return run_on_gpu(args, facts, out, started)


def run_on_gpu(args, facts: dict, out: Path, started: float) -> int:
    results = skeleton(facts, args.deadline)
    if args.merge and out.exists():
        try:
            previous = json.loads(out.read_text())
        except (OSError, ValueError):
            previous = {}
        if previous.get("cuda") and previous.get("gpu") == facts["gpu"]:
            results.update({k: previous[k] for k in ("parts", "tests", "throughput", "methods", "generation")
                            if k in previous})
    results["imports"] = import_checks()
    print("gpu-check: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()), flush=True)
    print("gpu-check: imports: " + ", ".join(f"{k} {v}" for k, v in results["imports"].items()), flush=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bakeoff-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        statuses = run_parts(args.selected, work, started + args.deadline, args.bench_args)
        collect(results, statuses, work)
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        json_path, md_path = write(results, out)
        log = save_logs(work, json_path, [p.name for p in args.selected])
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    print(f"gpu-check: wrote {json_path}, {md_path} and {log}")
    bad = [n for n, s in statuses.items() if s["status"] != "ok"]
    if bad:
        print("gpu-check: not ok: " + ", ".join(f"{n} ({statuses[n]['status']})" for n in bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
