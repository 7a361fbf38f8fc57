#!/usr/bin/env bash
# scripts/gpu_check.sh   (PYTHON=python3 WHEELS=wheels/gpu; about 5-8 minutes on one GPU)
#
# One command for a machine with one NVIDIA GPU and no network, where torch, torchvision,
# onnxruntime, opencv, tensorboard, tqdm and numpy are installed:
#   1. installs the project's other dependencies ONLY from $WHEELS (pip --no-index; fill the folder
#      with scripts/fetch_gpu_wheels.sh where the package index is reachable);
#   2. runs the GPU tests (pytest -m gpu);
#   3. prints training images/s at 224, batch 64 (fp32 / bf16 AMP / channels_last / compile=true /
#      targets in loader workers vs data.targets_on_device=true) and the network latency per
#      precision (scripts/bench_gpu.py).
# Without a GPU it runs the parts that work on a CPU (install check, pytest -m gpu, whose tests
# skip with their reasons, and a small CPU run of the benchmark's code paths) and says what it
# skipped. Exit status: 0 when every part that ran passed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels/gpu}
START=$SECONDS
status=0
step() { echo; echo "== $* ($((SECONDS - START)) s)"; }

step "1/4 environment"
$PY - <<'PY' || { echo "missing a preinstalled package (see above)"; exit 1; }
import importlib, platform
for m in ("torch", "torchvision", "onnxruntime", "cv2", "tensorboard", "tqdm", "numpy"):
    mod = importlib.import_module(m)
    print(f"  {m:12s} {getattr(mod, '__version__', '?')}")
import torch
print(f"  python {platform.python_version()}, CUDA available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"  GPU: {torch.cuda.get_device_name()}, bf16: {torch.cuda.is_bf16_supported()}")
PY
GPU=$($PY -c "import torch; print(int(torch.cuda.is_available()))")

step "2/4 project dependencies from $WHEELS (no network)"
# import name -> package name; kept in step with scripts/fetch_gpu_wheels.sh
missing=$($PY - <<'PY'
import importlib.util
need = {"hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime==4.9.3",
        "pycocotools": "pycocotools", "onnx": "onnx", "scipy": "scipy", "numba": "numba", "yaml": "pyyaml",
        "pytest": "pytest", "pytest_timeout": "pytest-timeout"}
print(" ".join(p for m, p in need.items() if importlib.util.find_spec(m) is None))
PY
)
if [ -z "$missing" ]; then
  echo "  all installed"
elif [ ! -d "$WHEELS" ]; then
  echo "  missing: $missing; no wheel folder $WHEELS (run scripts/fetch_gpu_wheels.sh where the index is reachable)"
  exit 1
else
  echo "  installing: $missing"
  # shellcheck disable=SC2086
  $PY -m pip install --no-index --find-links "$WHEELS" --quiet $missing || { echo "  install failed"; exit 1; }
fi

step "3/4 pytest -m gpu"
if [ "$GPU" = 1 ]; then
  timeout 240 $PY -m pytest -m gpu -q -rs -p no:cacheprovider || status=1
else
  echo "  no GPU: the GPU tests run and skip, each with its reason"
  timeout 240 $PY -m pytest -m gpu -q -rs -p no:cacheprovider || status=1
fi

step "4/4 training images/s and network latency"
if [ "$GPU" = 1 ]; then
  timeout 330 $PY scripts/bench_gpu.py --device cuda --size 224 --batch 64 || status=1
else
  echo "  no GPU: skipped the GPU figures (224, batch 64: fp32 / bf16 / channels_last / compile /"
  echo "  targets on device; fp16 and ONNX Runtime CUDA latency); a small CPU run checks the code:"
  timeout 300 $PY scripts/bench_gpu.py --device cpu --size 64 --batch 4 --windows 1 \
    --per-window 2 --workers 1 --rounds 3 || status=1
fi

step "done: $([ $status = 0 ] && echo ok || echo FAILED)"
exit $status
