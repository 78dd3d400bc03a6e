# bakeoff: the two commands a fresh machine needs are `make pipeline` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXPERIMENT ?= experiments/smoke.yaml
KFP_HOST ?=
# Pinned so pip takes the CPU wheel here; a bare `torch` requirement can pull a multi-GB CUDA build.
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv pipeline test test-fast bench bench-gpu gpu-check compile compiled lint clean check-deploy images base-image test-images

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

## pipeline: run EXPERIMENT (default: the offline smoke bake-off) locally; with KFP_HOST set, submit it
pipeline: $(STAMP)
	$(BIN)/bakeoff run $(EXPERIMENT) $(if $(KFP_HOST),--host $(KFP_HOST))

## test: the whole suite, end-to-end pipeline run included
test: $(STAMP)
	$(BIN)/python -m pytest -q

## test-fast: the suite without the end-to-end pipeline run
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e"

## bench: speed figures, measured side by side (outside make test; results in bench/results/)
bench: $(STAMP)
	$(BIN)/python bench/run_all.py

## bench-gpu: the same comparisons on a ~1B model, with MFU and peak memory (needs CUDA; under 10 minutes)
bench-gpu: $(STAMP)
	$(BIN)/python bench/bench_gpu.py

## gpu-check: on a CUDA GPU, the gpu-marked tests and bench-gpu's parts in under 8 minutes, each part with a time
## budget -> bench/results/gpu-latest.{json,md,log}; without CUDA: the dry run, "cuda": false, exit 0. Needs no
## venv (a lent GPU machine has none): it uses $(BIN)/python when there is one, else python3. GPU_CHECK_ARGS is
## passed on (e.g. --parts tests,methods --merge). bench/README.md has the command for a lent GPU.
GPU_CHECK_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	$(GPU_CHECK_PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

## compile: write the KFP YAML of EXPERIMENT to build/<name>.yaml
compile: $(STAMP)
	@mkdir -p build
	$(BIN)/bakeoff compile $(EXPERIMENT) -o build/$(notdir $(basename $(EXPERIMENT))).yaml

## check-deploy: the Helm chart and manifests, offline: lint and render (helm-python-sdk), kubernetes-validate
## --strict for 1.29-1.33 on the chart and every kustomize build, yamllint, hadolint and checkov.
## checkov has its own venv ($(VENV)/checkov): it pins boto3 and packaging below what the project installs.
check-deploy: $(STAMP)
	@test -x $(VENV)/checkov/bin/checkov || { $(PYTHON) -m venv $(VENV)/checkov && \
		$(VENV)/checkov/bin/python -m pip install -q "checkov>=3.2,<4"; }
	BAKEOFF_CHECK_DEPLOY=1 CHECKOV=$(VENV)/checkov/bin/checkov $(BIN)/python -m pytest -q tests/test_deploy.py

## images: build the five stage images from the one images/Dockerfile as $(REGISTRY)/bakeoff-<stage>:$(TAG) (the
## tag the pipeline expects by default is the package version); PUSH=1 pushes them. BASE_IMAGE / GPU_BASE_IMAGE
## replace the pinned bases (set per stage in images/build.sh), WHEELS offers local wheels first, CA_BUNDLE
## passes a CA for an intercepting proxy. See images/build.sh.
REGISTRY ?= localhost:5000/bakeoff
TAG ?=
images:
	REGISTRY=$(REGISTRY) TAG=$(TAG) images/build.sh $(STAGES)

## base-image: a Debian base made offline with debootstrap (local/debian:bookworm), for builds without a registry
base-image:
	images/base-image.sh

## test-images: probe each built image for the modules its stage imports, and run the whole smoke pipeline
## (all five stages, each in its own image) through KFP's Docker runner
test-images: $(STAMP)
	BAKEOFF_DOCKER_TEST=1 BAKEOFF_REGISTRY=$(REGISTRY) $(if $(TAG),BAKEOFF_IMAGE_TAG=$(TAG)) \
		$(BIN)/python -m pytest -q tests/test_images.py

## compiled: rewrite pipelines/compiled/<experiment>.yaml for every shipped experiment (CI fails when stale)
compiled: $(STAMP)
	$(BIN)/python -m bakeoff_pipelines.compiled --write

lint: $(STAMP)
	$(BIN)/ruff check src components pipelines tests bench

clean:
	rm -rf build runs .pytest_cache .ruff_cache
