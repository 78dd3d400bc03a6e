"""The five stage components: each turns its artifacts into paths, runs the stage (``bakeoff.stages``)
and logs Metrics."""

# typing.List: KFP reads list-of-artifact inputs from it.

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from bakeoff.images import image_for


@dsl.component(base_image=image_for("prepare"), install_kfp_package=False)
def prepare_data(spec_json: str, data: Output[Dataset]):
    """Read, check, template and split the spec's data into train / validation / test."""
    from bakeoff.spec import spec_from_json
    from bakeoff.stages import run_prepare

    run_prepare(spec_from_json(spec_json), data.path)


@dsl.component(base_image=image_for("finetune"), install_kfp_package=False)
def finetune(spec_json: str, arm: str, data: Input[Dataset], model: Output[Model], metrics: Output[Metrics]):
    """Fine-tune one arm; the Model artifact holds the adapter and training.json."""
    from bakeoff.spec import spec_from_json
    from bakeoff.stages import run_finetune

    result = run_finetune(spec_from_json(spec_json), arm, data.path, model.path)
    for name, value in result.metrics().items():
        metrics.log_metric(name, value)


@dsl.component(base_image=image_for("generate"), install_kfp_package=False)
def generate(spec_json: str, arm: str, data: Input[Dataset], model: Input[Model], generations: Output[Dataset]):
    """Answer the test split with the fine-tuned model and its base model (each variant)."""
    from bakeoff.spec import spec_from_json
    from bakeoff.stages import run_generate

    run_generate(spec_from_json(spec_json), arm, data.path, model.path, generations.path)


# The same component in the GPU image with vLLM (backend auto picks vLLM there when it can serve the arm).
generate_vllm = dsl.component(base_image=image_for("generate-vllm"), install_kfp_package=False)(generate.python_func)


@dsl.component(base_image=image_for("evaluate"), install_kfp_package=False)
def evaluate(spec_json: str, arm: str, generations: Input[Dataset], scores: Output[Dataset], metrics: Output[Metrics]):
    """Score one arm's answers; per-sample scores and the per-variant summary go to ``scores``."""
    import logging

    from bakeoff.spec import spec_from_json
    from bakeoff.stages import run_evaluate

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per judge request otherwise
    result = run_evaluate(spec_from_json(spec_json), arm, generations.path, scores.path)
    for variant, cells in result["metrics"].items():
        for name, cell in cells.items():
            if cell["mean"] is not None:
                metrics.log_metric(f"{variant}/{name}", cell["mean"])


@dsl.component(base_image=image_for("evaluate"), install_kfp_package=False)
def pairwise_judge(spec_json: str, scores: Input[List[Dataset]], pairwise: Output[Dataset]):
    """The pairwise judge (evaluation.pairwise): chosen pairs of arms compared answer by answer, both orders."""
    import logging

    from bakeoff.spec import spec_from_json
    from bakeoff.stages import run_pairwise

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per judge request otherwise
    run_pairwise(spec_from_json(spec_json), [s.path for s in scores], pairwise.path)


@dsl.component(base_image=image_for("report"), install_kfp_package=False)
def report(
    spec_json: str,
    data: Input[Dataset],
    models: Input[List[Model]],
    scores: Input[List[Dataset]],
    pairwise: Input[Dataset],
    html: Output[HTML],
    markdown: Output[Markdown],
    results: Output[Artifact],
    metrics: Output[Metrics],
):
    """Render the comparison: report.html, report.md, results.json and headline Metrics."""
    import shutil
    import tempfile

    from bakeoff.report import headline_metrics
    from bakeoff.spec import spec_from_json
    from bakeoff.stages import run_report

    with tempfile.TemporaryDirectory() as tmp:
        doc, paths = run_report(spec_from_json(spec_json), data.path, [m.path for m in models],
                                [s.path for s in scores], tmp, pairwise=pairwise.path)
        shutil.copyfile(paths["html"], html.path)
        shutil.copyfile(paths["md"], markdown.path)
        shutil.copyfile(paths["results"], results.path)
    for name, value in headline_metrics(doc).items():
        metrics.log_metric(name, value)
