#!/usr/bin/env bash
# Build (and with PUSH=1 push) the stage images: images/build.sh [STAGE...]  (default: all five)
#   REGISTRY        image prefix (default localhost:5000/bakeoff, as in src/bakeoff/images.py)
#   TAG             image tag (default: the package version, as the compiled pipelines expect)
#   BASE_IMAGE      base for the CPU stages (default: each Dockerfile's pinned python slim)
#   GPU_BASE_IMAGE  base for finetune and generate (default: the pinned CUDA runtime); CI builds
#                   both from a Debian base it makes with debootstrap (images/base-image.sh)
#   WHEELS          wheel files to offer pip first (copied to images/wheels/), e.g. a CPU torch
#   CA_BUNDLE       CA file for HTTPS through an intercepting proxy (a BuildKit secret, in no layer)
#   PIP_INDEX       another package index (an air-gapped mirror)
#   DOCKER          docker client with BuildKit (default: docker)
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' src/bakeoff/__init__.py)
REGISTRY=${REGISTRY:-localhost:5000/bakeoff}
TAG=${TAG:-$version}
DOCKER=${DOCKER:-docker}
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(prepare finetune generate evaluate report)

if [ -n "${WHEELS:-}" ]; then
  # shellcheck disable=SC2086
  cp -f $WHEELS images/wheels/
fi
for stage in "${stages[@]}"; do
  [ -f "images/$stage/Dockerfile" ] || { echo "no images/$stage/Dockerfile (stages: prepare finetune generate evaluate report)" >&2; exit 2; }
  args=(--file "images/$stage/Dockerfile" --tag "${REGISTRY%/}/bakeoff-$stage:$TAG")
  case "$stage" in
    finetune|generate) base=${GPU_BASE_IMAGE:-} ;;
    *) base=${BASE_IMAGE:-} ;;
  esac
  [ -n "$base" ] && args+=(--build-arg "BASE_IMAGE=$base")
  [ -n "${PIP_INDEX:-}" ] && args+=(--build-arg "PIP_INDEX=$PIP_INDEX")
  [ -n "${CA_BUNDLE:-}" ] && args+=(--secret "id=cabundle,src=$CA_BUNDLE")
  echo "== building ${REGISTRY%/}/bakeoff-$stage:$TAG${base:+ on $base}"
  start=$SECONDS
  DOCKER_BUILDKIT=1 "$DOCKER" build "${args[@]}" .
  echo "== built bakeoff-$stage in $((SECONDS - start)) s"
  if [ "${PUSH:-0}" = 1 ]; then "$DOCKER" push "${REGISTRY%/}/bakeoff-$stage:$TAG"; fi
done
