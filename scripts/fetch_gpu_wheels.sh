#!/usr/bin/env bash
# scripts/fetch_gpu_wheels.sh [DIR]   (default DIR: wheels/gpu, git-ignored)
#
# Fills DIR with the wheels scripts/gpu_check.sh installs on a GPU machine that has no network and
# already has torch, torchvision, onnxruntime, opencv, tensorboard, tqdm and numpy: this project's
# other dependencies and the test runner, with their own dependencies, for CPython 3.10-3.12 on
# manylinux x86_64. Run it on a machine with the package index in reach, then copy DIR along with
# the repository (gpu_check.sh reads WHEELS=DIR, default wheels/gpu).
#
# Binary wheels only (--only-binary=:all:, as pip requires for another platform), except
# antlr4-python3-runtime 4.9.3 (the version hydra-core 1.3 pins), which is published as a source
# archive only: it is pure Python, so it is built here once into a py3-none-any wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-wheels/gpu}
PIP=${PIP:-python3 -m pip}
mkdir -p "$DIR"
# the names gpu_check.sh installs (keep the two lists in step)
PKGS=(hydra-core omegaconf antlr4-python3-runtime==4.9.3 pycocotools onnx scipy numba pyyaml
      pytest pytest-timeout)
$PIP wheel --no-deps --no-binary :all: -w "$DIR" antlr4-python3-runtime==4.9.3
for v in 3.10 3.11 3.12; do
  $PIP download --only-binary=:all: --implementation cp --python-version "$v" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --find-links "$DIR" -d "$DIR" "${PKGS[@]}"
done
echo "wheels in $DIR: $(ls "$DIR" | wc -l) files, $(du -sh "$DIR" | cut -f1)"
