"""The five stage components."""

# typing.List: KFP reads list-of-artifact inputs from it.

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from bakeoff.images import image_for


@dsl.component(base_image=image_for("prepare"), install_kfp_package=False)
def prepare_data(spec_json: str, data: Output[Dataset]):
    """Read, check, template and split the spec's data into train / validation / test."""
    from bakeoff.data.prepare import prepare_for_arms
    from bakeoff.evaluate.evaluate import preflight
    from bakeoff.spec import spec_from_json

    spec = spec_from_json(spec_json)
    preflight(spec.evaluation)  # a judge that cannot be reached fails now, before any GPU-hour is spent
    # hosted arms have no tokenizer here: max_instruction_tokens counts with the local arms' (else words)
    prepare_for_arms(spec.data, [arm.model for arm in spec.arms if not arm.is_hosted], spec.seed, data.path)


@dsl.component(base_image=image_for("finetune"), install_kfp_package=False)
def finetune(spec_json: str, arm: str, data: Input[Dataset], model: Output[Model], metrics: Output[Metrics]):
    """Fine-tune one arm; the Model artifact holds the adapter and training.json."""
    from bakeoff.spec import spec_from_json
    from bakeoff.train.launch import finetune_arm

    result = finetune_arm(spec_from_json(spec_json), arm, data.path, model.path)
    for name, value in result.metrics().items():
        metrics.log_metric(name, value)


@dsl.component(base_image=image_for("generate"), install_kfp_package=False)
def generate(spec_json: str, arm: str, data: Input[Dataset], model: Input[Model], generations: Output[Dataset]):
    """Answer the test split with the fine-tuned model and its base model (each variant)."""
    from bakeoff.evaluate.evaluate import preflight
    from bakeoff.generate import generate as run
    from bakeoff.spec import spec_from_json

    spec = spec_from_json(spec_json)
    preflight(spec.evaluation)  # and again before generating: the endpoint may have gone since
    run(spec.arm(arm), spec.generation, spec.variants, data.path, model.path, generations.path,
        template=spec.data.template, seed=spec.seed)


@dsl.component(base_image=image_for("evaluate"), install_kfp_package=False)
def evaluate(spec_json: str, arm: str, generations: Input[Dataset], scores: Output[Dataset], metrics: Output[Metrics]):
    """Score one arm's answers; per-sample scores and the per-variant summary go to ``scores``."""
    import logging

    from bakeoff.evaluate import evaluate as run
    from bakeoff.spec import spec_from_json

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per judge request otherwise
    spec = spec_from_json(spec_json)
    result = run(arm, spec.evaluation, generations.path, scores.path, seed=spec.seed)
    for variant, cells in result["metrics"].items():
        for name, cell in cells.items():
            if cell["mean"] is not None:
                metrics.log_metric(f"{variant}/{name}", cell["mean"])


@dsl.component(base_image=image_for("report"), install_kfp_package=False)
def report(
    spec_json: str,
    data: Input[Dataset],
    models: Input[List[Model]],
    scores: Input[List[Dataset]],
    html: Output[HTML],
    markdown: Output[Markdown],
    results: Output[Artifact],
    metrics: Output[Metrics],
):
    """Render the comparison: report.html, report.md, results.json and headline Metrics."""
    import shutil
    import tempfile

    from bakeoff.report import headline_metrics
    from bakeoff.report import report as run
    from bakeoff.spec import spec_from_json

    spec = spec_from_json(spec_json)
    with tempfile.TemporaryDirectory() as tmp:
        doc, paths = run(spec, data.path, [m.path for m in models], [s.path for s in scores], tmp)
        shutil.copyfile(paths["html"], html.path)
        shutil.copyfile(paths["md"], markdown.path)
        shutil.copyfile(paths["results"], results.path)
    for name, value in headline_metrics(doc).items():
        metrics.log_metric(name, value)
