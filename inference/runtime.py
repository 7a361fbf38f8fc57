"""One inference interface over three backends: ONNX Runtime, TensorRT and a torch checkpoint.

    rt = load_runtime("model.onnx")            # or model.engine / model.plan, or epoch_249.pth
    x, matrix = rt.preprocess(image_rgb)       # (3, H, W) float32 in [0, 1]; original -> input
    maps = rt(x[None])                         # dict of (B, C, h, w) float32 numpy arrays

``maps`` always holds ``heatmap`` (B, K, h, w), ``part_affinity_fields`` (B, 2E, h, w) and
``maxpool_heatmap`` (B, K, h, w) in NCHW, whatever layout the ONNX graph or engine uses.

Everything the runtime needs to know about the model (topology, input size, stride, aspect
policy, normalisation, decoder parameters) comes from the model itself: the ONNX metadata
properties written by ``python -m export``, the JSON written beside a TensorRT engine by
``python -m export.tensorrt``, or the config stored in a checkpoint. Pre-processing is the
geometry of training's evaluation mode: ``datasets.geometry.fit_matrix`` (squash or letterbox)
applied with ``cv2.warpAffine``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datasets.geometry import (
    ASPECT_POLICIES,
    apply,
    compose,
    fit_matrix,
    invert,
    warp_image,
)
from datasets.topology import Topology

# Version of the metadata layout below; readers accept this and older versions.
FORMAT_VERSION = 1
INPUT_NAME = "input"
OUTPUT_NAMES = ("part_affinity_fields", "heatmap", "maxpool_heatmap")
LAYOUTS = ("nhwc", "nchw")
# trt_pose / Isaac default max-pool kernel, used only when a model carries no decoder parameters
DEFAULT_MAXPOOL_KERNEL = 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelInfo:
    """What a deployed model needs to be fed and decoded; travels as ONNX metadata."""

    topology: Topology
    input_size: tuple[int, int]  # (H, W) network input
    stride: int = 4
    aspect: str = "squash"
    targets: dict[str, Any] = field(default_factory=dict)
    decoder: dict[str, Any] = field(default_factory=dict)  # Isaac OpenPoseDecoder parameters
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    layout: str = "nchw"  # layout of the graph's outputs
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        self.stride = int(self.stride)
        if self.aspect not in ASPECT_POLICIES:
            raise ValueError(f"aspect {self.aspect!r} is not one of {ASPECT_POLICIES}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} is not one of {LAYOUTS}")
        h, w = self.input_size
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"input size {self.input_size} is not a multiple of stride {self.stride}"
            )

    @property
    def map_size(self) -> tuple[int, int]:
        """(h, w) of the output maps."""
        return self.input_size[0] // self.stride, self.input_size[1] // self.stride

    @property
    def maxpool_kernel(self) -> int:
        return int(self.decoder.get("maxpool_kernel", DEFAULT_MAXPOOL_KERNEL))

    # ------------------------------------------------------------------ ONNX metadata
    def to_metadata(self) -> dict[str, str]:
        """ONNX ``metadata_props``: string keys, JSON string values."""
        return {
            "format_version": str(self.format_version),
            "producer": "pafpose",
            "topology": json.dumps(self.topology.to_dict()),
            "input_size": json.dumps(list(self.input_size)),
            "stride": str(self.stride),
            "aspect": self.aspect,
            "targets": json.dumps(self.targets),
            "normalization": json.dumps(
                {
                    "input": "RGB in [0, 1], N x 3 x H x W",
                    "inside_graph": True,
                    "mean": list(self.mean),
                    "std": list(self.std),
                }
            ),
            "layout": self.layout,
            "decoder": json.dumps(self.decoder),
        }

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str = "model") -> ModelInfo:
        """Inverse of ``to_metadata``; names the missing key and the file when incomplete."""
        missing = [k for k in ("topology", "input_size", "stride") if k not in props]
        if missing:
            raise ValueError(
                f"{source}: metadata lacks {missing} (keys: {sorted(props)}); was it written by "
                "`python -m export`?"
            )
        version = int(props.get("format_version", 1))
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{source}: metadata format_version {version} is newer than this code reads "
                f"({FORMAT_VERSION})"
            )
        norm = json.loads(props.get("normalization", "{}"))
        return cls(
            topology=Topology.from_dict(json.loads(props["topology"])),
            input_size=tuple(json.loads(props["input_size"])),
            stride=int(props["stride"]),
            aspect=props.get("aspect", "squash"),
            targets=json.loads(props.get("targets", "{}")),
            decoder=json.loads(props.get("decoder", "{}")),
            mean=tuple(norm.get("mean", IMAGENET_MEAN)),
            std=tuple(norm.get("std", IMAGENET_STD)),
            layout=props.get("layout", "nchw"),
            format_version=version,
        )

    @classmethod
    def from_checkpoint_config(
        cls, config: Mapping[str, Any], stride: int | None = None, decoder: Mapping | None = None
    ) -> ModelInfo:
        """From the resolved training config stored in a checkpoint."""
        from datasets.topology import topology_from_config

        try:
            topo = topology_from_config(config["topology"])
            input_size = config["data"]["input_size"]
        except KeyError as e:
            raise ValueError(f"checkpoint config lacks {e} (keys: {sorted(config)})") from None
        targets = dict(config.get("targets") or {})
        model_cfg = config.get("model") or {}
        dec = dict(decoder if decoder is not None else (config.get("decoder") or {}))
        dec.pop("_target_", None)
        return cls(
            topology=topo,
            input_size=tuple(input_size),
            stride=int(stride or targets.get("stride") or model_cfg.get("stride") or 4),
            aspect=str(config["data"].get("aspect", "squash")),
            targets=targets,
            decoder=dec,
            mean=tuple(model_cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(model_cfg.get("std", IMAGENET_STD)),
            layout="nchw",
        )


# ---------------------------------------------------------------------- pre/post-processing
def preprocess_image(
    image: np.ndarray, info: ModelInfo, max_upsample: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 (h, w, 3) -> network input (3, H, W) float32 in [0, 1] and the 2x3 matrix
    taking original image coordinates to input coordinates (training's eval-mode geometry).

    Like training's loader (which decodes JPEGs at 1/2, 1/4 or 1/8 size while the warp still
    magnifies those pixels at most ``max_upsample`` times), a large image is first reduced by
    that power of two with area averaging, then warped bilinearly: no aliasing from a strong
    bilinear downscale, and the same picture statistics the network was trained on.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be RGB (h, w, 3); got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB; got dtype {image.dtype}")
    height, width = info.input_size
    h, w = image.shape[:2]
    m = fit_matrix((h, w), (height, width), info.aspect)
    stretch = float(np.linalg.svd(m[:, :2], compute_uv=False)[0])
    r = 1
    while r < 8 and 2 * r * stretch <= max_upsample:
        r *= 2
    src, warp = image, m
    if r > 1:
        rh, rw = -(-h // r), -(-w // r)  # ceil, as a 1/r JPEG decode
        src = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA)
        # reduced pixel i covers original [i * w / rw, (i + 1) * w / rw)
        warp = compose(m, np.array([[w / rw, 0.0, 0.0], [0.0, h / rh, 0.0]]))
    warped = warp_image(src, warp, (height, width))  # (H, W, 3) uint8
    x = warped.astype(np.float32).transpose(2, 0, 1) * np.float32(1 / 255)  # (3, H, W)
    return np.ascontiguousarray(x), m


def skeletons_to_original(skeletons: Sequence[Any], matrix: np.ndarray) -> list[Any]:
    """Map decoded skeletons from network-input pixels back to original image pixels, in place.

    Decode with ``output_scale = info.input_size`` to get input pixels; ``matrix`` is the
    original -> input affine from ``preprocess``. Missing parts (NaN) stay NaN.
    """
    inv = invert(matrix)
    for sk in skeletons:
        kp = sk.keypoints
        kp[:, :2] = apply(inv, kp[:, :2])
    return list(skeletons)


def maxpool_nchw(heatmap: np.ndarray, kernel: int) -> np.ndarray:
    """Max-pool (B, K, h, w) with stride 1 and same padding (numpy; for maps without one)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(heatmap, dtype=np.float32))
    return F.max_pool2d(t, kernel, stride=1, padding=kernel // 2).numpy()


# ---------------------------------------------------------------------- backends
class Runtime:
    """Base class: ``info``, ``preprocess`` and ``__call__`` (see the module docstring)."""

    backend = "base"
    info: ModelInfo

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 image -> ((3, H, W) float32, 2x3 original->input matrix)."""
        return preprocess_image(image, self.info)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self._check_batch(batch)
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise TypeError(f"{type(self).__name__} does not implement _run")

    def _check_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        h, w = self.info.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, h, w):
            raise ValueError(
                f"input batch must be (B, 3, {h}, {w}) float32 RGB in [0, 1]; got {batch.shape}"
            )
        return np.ascontiguousarray(batch, dtype=np.float32)

    def make_decoder(self, **overrides: Any):
        """The OpenPoseDecoder configured from the model's own decoder parameters."""
        from inference.decoder import OpenPoseDecoder

        params = {**self.info.decoder, **overrides}
        return OpenPoseDecoder.from_config(params, self.info.topology)

    def _to_nchw(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name in OUTPUT_NAMES:
            if name not in arrays:
                raise RuntimeError(f"{self.backend} model gave no output {name!r} ({list(arrays)})")
            a = np.asarray(arrays[name], dtype=np.float32)
            if self.info.layout == "nhwc":
                a = a.transpose(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)
            out[name] = np.ascontiguousarray(a)
        return out


class OnnxRuntime(Runtime):
    """ONNX Runtime session (CPU, or CUDA with CPU fallback), all graph optimisations on."""

    backend = "onnxruntime"

    def __init__(
        self, path: str | Path, device: str = "cpu", threads: int | None = None, info=None
    ) -> None:
        import onnx
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    f"device={device!r} but this onnxruntime has no CUDAExecutionProvider "
                    f"(available: {ort.get_available_providers()}); install onnxruntime-gpu"
                )
            dev_id = int(device.split(":")[1]) if ":" in device else 0
            providers = [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        if info is None:
            props = self.session.get_modelmeta().custom_metadata_map
            if not props:  # older onnxruntime builds: read the file's metadata directly
                model = onnx.load(str(self.path), load_external_data=False)
                props = {p.key: p.value for p in model.metadata_props}
            info = ModelInfo.from_metadata(props, source=str(self.path))
        self.info = info
        inputs = self.session.get_inputs()
        if [i.name for i in inputs] != [INPUT_NAME]:
            raise ValueError(
                f"{self.path}: expected one input {INPUT_NAME!r}, got {[i.name for i in inputs]}"
            )
        batch_dim = inputs[0].shape[0]
        self.static_batch = batch_dim if isinstance(batch_dim, int) else None

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        n = self.static_batch
        if n is None or batch.shape[0] == n:
            outs = self._session_run(batch)
        else:  # a static-batch graph: run in chunks of its batch size (padding the last one)
            parts = []
            for i in range(0, batch.shape[0], n):
                chunk = batch[i : i + n]
                pad = n - chunk.shape[0]
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
                res = self._session_run(chunk)
                parts.append({k: v[: n - pad] for k, v in res.items()})
            outs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self._to_nchw(outs)

    def _session_run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        values = self.session.run(names, {INPUT_NAME: batch})
        return dict(zip(names, values, strict=True))


class TorchRuntime(Runtime):
    """A training checkpoint run in torch eager mode (the fp32 reference of the other backends)."""

    backend = "torch"

    def __init__(self, path: str | Path, device: str = "cpu", decoder: Mapping | None = None):
        import torch

        from models import build_from_checkpoint

        self.path = Path(path)
        self.device = torch.device(device)
        model, config = build_from_checkpoint(self.path)
        self.model = model.to(self.device).eval()
        self.info = ModelInfo.from_checkpoint_config(
            config, stride=getattr(model, "stride", None), decoder=decoder
        )

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch
        import torch.nn.functional as F

        k = self.info.maxpool_kernel
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)  # (B, 3, H, W)
            heat, paf = self.model(x)  # (B, K, h, w), (B, 2E, h, w)
            pooled = F.max_pool2d(heat, k, stride=1, padding=k // 2)
        return {
            "heatmap": heat.float().cpu().numpy(),
            "part_affinity_fields": paf.float().cpu().numpy(),
            "maxpool_heatmap": pooled.float().cpu().numpy(),
        }


class TensorRTRuntime(Runtime):
    """A serialised TensorRT engine; device buffers are torch CUDA tensors."""

    backend = "tensorrt"

    def __init__(self, path: str | Path, device: str = "cuda") -> None:
        import torch

        try:
            import tensorrt as trt
        except ImportError as e:
            raise RuntimeError(
                f"{path}: running a TensorRT engine needs the `tensorrt` Python package "
                f"(pip install '.[trt]') and a CUDA GPU ({e})"
            ) from None
        if not torch.cuda.is_available():
            raise RuntimeError(f"{path}: running a TensorRT engine needs a CUDA GPU; none found")
        self.path = Path(path)
        self.trt = trt
        self.device = torch.device(device if device.startswith("cuda") else "cuda")
        sidecar = engine_sidecar(self.path)
        if not sidecar.is_file():
            raise FileNotFoundError(
                f"{self.path}: no {sidecar.name} beside the engine (model metadata); build engines "
                "with `python -m export.tensorrt`"
            )
        meta = json.loads(sidecar.read_text())
        self.info = ModelInfo.from_metadata(meta["metadata"], source=str(sidecar))
        self.logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            runtime = trt.Runtime(self.logger)
            self.engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise RuntimeError(
                    f"{self.path}: TensorRT could not deserialise the engine (built with "
                    f"TensorRT {meta.get('versions', {}).get('tensorrt')}, running "
                    f"{trt.__version__}; engines are specific to the version and GPU)"
                )
            self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        trt = self.trt
        with torch.cuda.device(self.device):
            x = torch.from_numpy(batch).to(self.device)  # (B, 3, H, W) float32
            in_dtype = _torch_dtype(trt.nptype(self.engine.get_tensor_dtype(INPUT_NAME)))
            x = x.to(in_dtype).contiguous()
            self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
            self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
            outs: dict[str, torch.Tensor] = {}
            for name in self.names:
                if self.engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
                    continue
                shape = tuple(self.context.get_tensor_shape(name))
                dtype = _torch_dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
                outs[name] = torch.empty(shape, dtype=dtype, device=self.device)
                self.context.set_tensor_address(name, outs[name].data_ptr())
            stream = torch.cuda.current_stream(self.device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(
                    f"{self.path}: TensorRT execution failed for input {tuple(x.shape)}"
                )
            stream.synchronize()
            arrays = {k: v.float().cpu().numpy() for k, v in outs.items()}
        return self._to_nchw(arrays)


def _torch_dtype(np_dtype: Any):
    import torch

    return {
        np.dtype(np.float32): torch.float32,
        np.dtype(np.float16): torch.float16,
        np.dtype(np.int8): torch.int8,
        np.dtype(np.int32): torch.int32,
    }[np.dtype(np_dtype)]


def engine_sidecar(engine_path: str | Path) -> Path:
    """The JSON written beside an engine: model metadata and TensorRT/CUDA/GPU versions."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def load_runtime(path: str | Path, device: str = "cpu", **kwargs: Any) -> Runtime:
    """Open a model by file suffix: .onnx (onnxruntime), .engine/.plan (tensorrt), .pth/.pt (torch)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        return OnnxRuntime(p, device=device, **kwargs)
    if suffix in (".engine", ".plan", ".trt"):
        return TensorRTRuntime(p, device=device if device != "cpu" else "cuda", **kwargs)
    if suffix in (".pth", ".pt"):
        return TorchRuntime(p, device=device, **kwargs)
    raise ValueError(
        f"{p}: unknown model type {suffix!r}; expected .onnx, .engine/.plan or .pth/.pt"
    )
