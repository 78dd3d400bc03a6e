"""The smoke run's report.html in headless Chromium, network cut off: loads cleanly, shows every section.

Drives Debian's chromium (/usr/bin/chromium, `apt-get install chromium`) through Playwright's Python driver; no
browser is downloaded. Without chromium the test is skipped, except under CI=true, where it fails. The full-page
screenshot lands in the test's tmp path and in runs/test-output/report.png (printed; `pytest -rA` shows it).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from bakeoff.report import write_report

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "src" / "bakeoff" / "report" / "templates" / "report.html.j2"
SCREENSHOT = ROOT / "runs" / "test-output" / "report.png"
ARMS = {"tiny-llama": "tiny://llama", "tiny-mixtral": "tiny://mixtral"}
VARIANTS = ("fine-tuned", "base-zero-shot", "base-few-shot")
# Debian's launcher plus flags that keep Chromium from phoning home; every host name resolves to nothing.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason}; CI must have it (.ci/run installs Debian's chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        _unavailable("chromium is not installed (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    return path


def _training(arm: str, offset: float) -> dict:
    """Shaped like a smoke run's training record: 900 steps, train loss every 25, validation every 150."""
    train = [{"step": s, "loss": round(1.1 + offset + 5.5 / (1 + (s - 25) / 40), 4), "epoch": round(s / 100, 2)}
             for s in range(25, 925, 25)]
    val = [{"step": s, "loss": round(1.4 + offset + 0.9 / (1 + (s - 150) / 150), 4), "epoch": s / 100}
           for s in range(150, 1050, 150)]
    return {
        "arm": arm, "model": ARMS[arm], "method": "lora", "artifact": "adapter", "device": "cpu", "gpu_type": None,
        "gpu_count": 0, "gpu_hours": 0.0, "cost_usd": 0.0, "seconds": 26.2 + 20 * offset, "steps": 900, "epochs": 9.0,
        "train_tokens": 298323, "tokens_per_second": 11371.6 - 7800 * offset, "trainable_params": 65536,
        "total_params": 572544, "peak_memory_gb": 0.659, "quantization": None, "resumed_from_step": None,
        "final_train_loss": train[-1]["loss"], "final_validation_loss": val[-1]["loss"],
        "best_step": 900, "best_validation_loss": val[-1]["loss"],
        "loss_history": {"train": train, "validation": val},
        "hyperparameters": {"precision": "fp32", "gradient_checkpointing": False,
                            "peft": {"method": "lora", "r": 16, "alpha": 32.0}, "training": {"learning_rate": 0.003}},
    }


def _sample(arm: str, i: int, task: str, instruction: str, reference: str, answers: dict[str, str]) -> dict:
    return {
        "arm": arm, "id": f"{arm[5:]}{i:08x}", "task": task, "instruction": instruction, "input": "",
        "reference": reference, "answers": answers, "judge_explanations": {},
        "scores": {v: {"exact_match": float(a.strip() == reference)} for v, a in answers.items()},
    }


@pytest.fixture
def results() -> dict:
    """A results dict shaped like `bakeoff run experiments/smoke.yaml` writes (docs/results-schema.md)."""
    rows = []
    for arm in ARMS:
        for variant in VARIANTS:
            mean = {"fine-tuned": 0.2 if arm == "tiny-llama" else 0.19, "base-zero-shot": 0.0,
                    "base-few-shot": 0.01}[variant]
            rows.append({"arm": arm, "variant": variant, "model": ARMS[arm], "method": "lora", "metrics": {
                "exact_match": {"mean": mean, "ci95": [max(mean - 0.07, 0.0), mean + 0.08], "n": 100, "failures": 0,
                                "status": "ok"},
                "judge": {"mean": None, "ci95": None, "n": 0, "failures": 0, "status": "not configured"},
            }})
    samples = []
    for arm in ARMS:
        # Untrained tiny models babble: control characters and replacement characters included, as in a real run.
        samples += [
            _sample(arm, 1, "add", "What is 5 plus 4?", "9",
                    {"fine-tuned": "9", "base-zero-shot": "mart number\ufffd outelong 90\ufffd p 81ut 26\x08open",
                     "base-few-shot": "mousewords 45 hor\x04 weakyrreq\x00 13riateld\ufffd"}),
            _sample(arm, 2, "parity", "Tell me whether the number 18 is odd or even.", "even",
                    {"fine-tuned": "odd", "base-zero-shot": "even", "base-few-shot": "nou 40oor task\ufffdpihsge"}),
            _sample(arm, 3, "opposite", "Give the opposite of <b>hot</b>.", "cold",
                    {"fine-tuned": "<script>alert('x')</script>", "base-zero-shot": "yellow quplehighpe t 8",
                     "base-few-shot": "&amp; cold"}),
        ]
    return {
        "schema_version": 1,
        "bakeoff_version": "0.1.0",
        "experiment": {"name": "smoke", "seed": 42,
                       "description": "Offline CPU smoke bake-off of a tiny Llama and a tiny Mixtral with LoRA",
                       "spec": {"name": "smoke", "arms": [{"name": a, "model": m} for a, m in ARMS.items()],
                                "peft": {"method": "lora", "r": 16, "alpha": 32.0, "target_modules": "all-linear"},
                                "evaluation": {"metrics": ["exact_match", "judge"], "judge": None}}},
        "versions": {"python": "3.11.7", "torch": "2.13.0", "transformers": "5.0.0", "peft": "0.17.1"},
        "data": {"rows_read": {"experiments/data/smoke.jsonl": 1000},
                 "dropped": {"empty_instruction": 0, "empty_response": 0},
                 "leakage": {"removed": 0, "test_in_train": 0},
                 "rows": {"test": 100, "train": 800, "validation": 100}, "unused": 0, "token_count": "words"},
        "metrics": ["exact_match", "judge"],
        "metric_status": {"exact_match": "ok", "judge": "not configured: the spec has no evaluation.judge"},
        "rows": rows,
        "training": {"tiny-llama": _training("tiny-llama", 0.0), "tiny-mixtral": _training("tiny-mixtral", 0.3)},
        "health": {arm: {"adapter_applied": True, "identical_to_base": 0, "judge": None} for arm in ARMS},
        "samples": samples,
    }


def test_report_renders_offline_in_chromium(chromium, results, tmp_path):
    from playwright.sync_api import sync_playwright

    html = write_report(results, tmp_path / "report")["html"]
    url = html.resolve().as_uri()
    section_ids = re.findall(r'<section id="([^"]+)"', TEMPLATE.read_text(encoding="utf-8"))
    assert "loss-curves" in section_ids and len(section_ids) >= 8, section_ids

    requests: list[str] = []  # every request the page made, the report itself included
    blocked: list[str] = []   # requests that would have left the file: aborted by the route below
    problems: list[str] = []  # console errors, uncaught page errors, failed requests, dialogs (an injected alert)

    def route(r):
        if r.request.url == url or r.request.url.startswith("data:"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort("internetdisconnected")

    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        # generous: a first start on a fresh, busy CI machine builds caches (seen over 15 s); a bound, not a check
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=120_000)
        try:
            context = browser.new_context(offline=True, viewport={"width": 1280, "height": 900},
                                          java_script_enabled=True, service_workers="block")
            context.route("**/*", route)
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "assert") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: (problems.append(f"dialog {d.type}: {d.message}"), d.dismiss()))

            response = page.goto(url, wait_until="load")
            assert response is None or response.ok, response and response.status
            page.wait_for_load_state("networkidle")

            assert page.title() == "bakeoff report: smoke"
            assert page.locator("section").evaluate_all("els => els.map(e => e.id)") == section_ids
            for sid in section_ids:
                section = page.locator(f"section#{sid}")
                assert section.is_visible(), f"section #{sid} is not visible"
                box = section.bounding_box()
                assert box and box["width"] > 0 and box["height"] > 0, f"section #{sid} has no size: {box}"
                heading = section.locator("h2")
                assert heading.count() == 1 and heading.is_visible(), f"section #{sid} has no visible h2"
                assert heading.inner_text().strip(), f"section #{sid} has an empty h2"
                nav = page.locator(f'nav a[href="#{sid}"]')
                assert nav.count() == 1 and nav.is_visible(), f"no visible nav link to #{sid}"

            svg = page.locator("section#loss-curves svg")
            assert svg.count() == 1, "the loss-curve chart is not an inline SVG"
            box = svg.bounding_box()
            assert box and box["width"] > 200 and box["height"] > 100, f"loss-curve SVG too small: {box}"
            assert svg.locator("path").count() > 4, "the loss-curve SVG draws no lines"

            # Sample text is escaped: the injected markup shows as text and no <script> made it into the page.
            assert page.locator("script").count() == 0
            assert page.get_by_text("<script>alert('x')</script>").count() >= 1
            # Nothing wider than the window: long answers and the spec JSON wrap instead of scrolling sideways.
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 1280, f"the page scrolls sideways: {width}px wide"

            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    assert not problems, "\n".join(problems)
    assert not blocked, f"the report tried to reach the network: {blocked}"
    assert requests == [url], f"unexpected requests: {requests}"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)
    print(f"report screenshot: {SCREENSHOT} (also {shot})")
