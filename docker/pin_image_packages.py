"""Write pip constraints that pin the packages a base image ships and must keep.

python docker/pin_image_packages.py > constraints.txt
pip install -c constraints.txt .

NGC PyTorch images build torch, torchvision, TensorRT, etc. for their CUDA stack; a pip install
that upgraded any of them from the public index would swap in a generic build. Pinning each one that
is installed to its installed version makes pip keep it (or fail loudly if a requirement truly
conflicts) while it adds what is missing.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys

# distributions tied to the image's CUDA/driver stack or compiled against its numpy
KEEP = re.compile(
    r"^(torch|torchvision|torchaudio|triton|pytorch-triton|tensorrt.*|nvidia-.*|numpy|"
    r"opencv.*|onnx|onnxruntime.*|pycocotools|transformer-engine.*|apex|cupy.*)$",
    re.IGNORECASE,
)


def pins() -> list[str]:
    """``name==version`` for every installed distribution matching KEEP, sorted by name."""
    out = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name and KEEP.match(name):
            out[name.lower()] = f"{name}=={dist.version}"
    return [out[k] for k in sorted(out)]


if __name__ == "__main__":
    sys.stdout.write("".join(p + "\n" for p in pins()))
