#!/usr/bin/env bash
# bench/gpu_wheels.sh [DIR]: the wheels `make gpu-check` needs on a lent GPU machine, into DIR (default
# build/gpu-wheels, which git ignores: the device run carries it).
#
# That machine has no network and its own Python 3.12 with torch, transformers, peft and accelerate; it lacks
# trl, bitsandbytes, liger-kernel, datasets (and dill, multiprocess), pydantic (and pydantic-core,
# annotated-types, typing-inspection) and this package. Each is fetched for CPython 3.12 on x86-64 at the
# version this venv runs (the one the suite tests); liger-kernel, which the venv does not have, at
# LIGER_VERSION. The total must stay under LIMIT_MIB (64 MiB a device call, less the working tree).
# Then every requirement of every wheel is checked against what is carried and what the machine has
# (bench/gpu_check.py --check-wheels). Run it right before the device call: the bakeoff wheel is built from
# the working tree as it is (gpu_check.py puts the tree's src/ first on the path in any case).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-build/gpu-wheels}
PY=${PYTHON:-.venv/bin/python}
LIMIT_MIB=${LIMIT_MIB:-60}
LIGER_VERSION=${LIGER_VERSION:-0.8.5}

rm -rf "$DIR"
mkdir -p "$DIR"
version() { "$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"; }

# 1. this package (pure Python), from the working tree
if ! log=$("$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" . 2>&1); then
    echo "$log" >&2
    exit 1
fi

# 2. the libraries the machine lacks, at the venv's versions, built for the machine's Python and platform
fetch() {
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        --platform any -d "$DIR" "$@" 2> >(grep -v "is neither a file nor a directory" >&2)
}
pins=()
for name in trl bitsandbytes datasets dill multiprocess pydantic pydantic-core annotated-types typing-inspection \
            typing-extensions; do
    pins+=("$name==$(version "$name")")
done
fetch "${pins[@]}"

# 3. liger-kernel: optional (fused Triton kernels; without it the stage runs without them and says so)
if ! fetch "liger-kernel==$LIGER_VERSION"; then
    echo "gpu_wheels: liger-kernel==$LIGER_VERSION is not on the package index; going on without it" >&2
fi

# 4. sizes, and the limit
"$PY" - "$DIR" "$LIMIT_MIB" <<'EOF'
import sys
from pathlib import Path

folder, limit = Path(sys.argv[1]), float(sys.argv[2])
wheels = sorted(folder.glob("*.whl"), key=lambda p: -p.stat().st_size)
for w in wheels:
    print(f"  {w.stat().st_size / 2**20:8.2f} MiB  {w.name}")
total = sum(w.stat().st_size for w in wheels) / 2**20
print(f"  {total:8.2f} MiB  total ({len(wheels)} wheels; limit {limit:g} MiB)")
if total > limit:
    sys.exit(f"gpu_wheels: {folder} is over {limit:g} MiB: a device call carries 64 MiB with the working tree")
EOF

# 5. every requirement carried or on the machine
"$PY" bench/gpu_check.py --check-wheels "$DIR"
