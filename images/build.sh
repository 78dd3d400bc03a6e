#!/usr/bin/env bash
# Build (and with PUSH=1 push) the stage images: images/build.sh [STAGE...]  (default: all six: the five
# stages and generate-vllm, the GPU generate image with vLLM, which pins a torch of its own)
# All five come from the one images/Dockerfile (--build-arg STAGE=<stage>); the table below is the one
# place their per-stage build arguments live.
#   REGISTRY        image prefix (default localhost:5000/bakeoff, as in src/bakeoff/images.py)
#   TAG             image tag (default: the package version, as the compiled pipelines expect)
#   BASE_IMAGE      base for the CPU stages (default: the pinned python slim below)
#   GPU_BASE_IMAGE  base for finetune and generate (default: the pinned CUDA runtime below); CI builds
#                   both from a Debian base it makes with debootstrap (images/base-image.sh)
#   WHEELS          wheel files to offer pip first (copied to images/wheels/), e.g. a CPU torch
#   CA_BUNDLE       CA file for HTTPS through an intercepting proxy (a BuildKit secret, in no layer)
#   PIP_INDEX       another package index (an air-gapped mirror)
#   DOCKER          docker client with BuildKit (default: docker)
set -euo pipefail
cd "$(dirname "$0")/.."

# The per-stage build arguments of images/Dockerfile, in this one place: each stage's pinned base (python
# slim for the CPU stages; the CUDA runtime for finetune and generate, whose torch from PyPI is the CUDA
# build) and its torch pin (TORCH_VERSION; "-" for none: the CPU stages' extras have no torch).
CPU_BASE=python:3.11.11-slim-bookworm
GPU_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
stage_args() {  # STAGE -> "BASE_IMAGE TORCH_VERSION"
  case "$1" in
    prepare)  echo "${BASE_IMAGE:-$CPU_BASE} -" ;;
    finetune) echo "${GPU_BASE_IMAGE:-$GPU_BASE} 2.13.0" ;;
    generate) echo "${GPU_BASE_IMAGE:-$GPU_BASE} 2.13.0" ;;
    generate-vllm) echo "${GPU_BASE_IMAGE:-$GPU_BASE} 2.14.0" ;;  # vLLM 0.34.0 pins torch 2.14.0
    evaluate) echo "${BASE_IMAGE:-$CPU_BASE} -" ;;
    report)   echo "${BASE_IMAGE:-$CPU_BASE} -" ;;
    *) return 1 ;;
  esac
}
all_stages=(prepare finetune generate generate-vllm evaluate report)

version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' src/bakeoff/__init__.py)
REGISTRY=${REGISTRY:-localhost:5000/bakeoff}
TAG=${TAG:-$version}
DOCKER=${DOCKER:-docker}
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=("${all_stages[@]}")
for stage in "${stages[@]}"; do
  stage_args "$stage" >/dev/null || { echo "no stage $stage (stages: ${all_stages[*]})" >&2; exit 2; }
done

if [ -n "${WHEELS:-}" ]; then
  # shellcheck disable=SC2086
  cp -f $WHEELS images/wheels/
fi
for stage in "${stages[@]}"; do
  read -r base torch <<<"$(stage_args "$stage")"
  [ "$torch" = - ] && torch=
  args=(--file images/Dockerfile --tag "${REGISTRY%/}/bakeoff-$stage:$TAG"
        --build-arg "STAGE=$stage" --build-arg "BASE_IMAGE=$base" --build-arg "TORCH_VERSION=$torch")
  [ -n "${PIP_INDEX:-}" ] && args+=(--build-arg "PIP_INDEX=$PIP_INDEX")
  [ -n "${CA_BUNDLE:-}" ] && args+=(--secret "id=cabundle,src=$CA_BUNDLE")
  echo "== building ${REGISTRY%/}/bakeoff-$stage:$TAG on $base"
  start=$SECONDS
  DOCKER_BUILDKIT=1 "$DOCKER" build "${args[@]}" .
  echo "== built bakeoff-$stage in $((SECONDS - start)) s"
  if [ "${PUSH:-0}" = 1 ]; then "$DOCKER" push "${REGISTRY%/}/bakeoff-$stage:$TAG"; fi
done
