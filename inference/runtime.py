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
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from datasets.errors import UsageError, UserError
from datasets.files import where_checkpoints_are
from inference.decoder import build_decoder
from models.contract import INPUT_NAME, OUTPUT_NAMES, ModelInfo, preprocess_image


def maxpool_nchw(heatmap: np.ndarray, kernel: int) -> np.ndarray:
    """Max-pool (B, K, h, w) with stride 1 and same padding (numpy; for maps without one)."""
    # torch only on this path: the ONNX Runtime path does not import it
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
        """The decoder configured from the model's own decoder parameters (``build_decoder``)."""
        return build_decoder({**self.info.decoder, **overrides}, self.info.topology)

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
        self,
        path: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        info=None,
        spin: bool = True,
    ) -> None:
        """``spin=False``: the intra-op threads sleep between runs instead of spinning, so they
        leave the cores to other work of the process or machine (benchmarks of several paths)."""
        # each backend imports its own library when opened: no backend pays for another's import
        import onnx
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        if not spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError(
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
        # torch and the networks only for this backend: the ONNX Runtime path stays numpy-only
        import torch

        from models.build import build_from_checkpoint

        self.path = Path(path)
        device = check_device(device)
        if device != "cpu":
            _cuda_or_error(device, self.path)
        self.device = torch.device(device)
        model, config = build_from_checkpoint(self.path)
        self.model = model.to(self.device).eval()
        self.info = ModelInfo.from_checkpoint_config(
            config, stride=getattr(model, "stride", None), decoder=decoder
        )

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch  # see __init__: torch only for the torch and TensorRT backends
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
        import torch  # device buffers; torch only for the torch and TensorRT backends

        try:  # optional dependency (the `trt` extra), on CUDA machines only
            import tensorrt as trt
        except ImportError as e:
            raise UserError(
                f"{path}: running a TensorRT engine needs the `tensorrt` Python package "
                f"(pip install '.[trt]') and a CUDA GPU ({e})"
            ) from None
        if not torch.cuda.is_available():
            raise UserError(f"{path}: running a TensorRT engine needs a CUDA GPU; none found")
        self.path = Path(path)
        self.trt = trt
        device = check_device(device)
        device = device if device.startswith("cuda") else "cuda"
        _cuda_or_error(device, self.path)
        self.device = torch.device(device)
        sidecar = engine_sidecar(self.path)
        if not sidecar.is_file():
            raise UserError(
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
                raise UserError(
                    f"{self.path}: TensorRT could not deserialise the engine (built with "
                    f"TensorRT {meta.get('versions', {}).get('tensorrt')}, running "
                    f"{trt.__version__}; engines are specific to the version and GPU)"
                )
            self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch  # see __init__: torch only for the torch and TensorRT backends

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
    import torch  # TensorRT backend only (see TensorRTRuntime)

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


def check_device(device: Any) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (lower case), else a UsageError."""
    d = str(device or "cpu").strip().lower()
    if d == "cpu" or re.fullmatch(r"cuda(:\d+)?", d):
        return d
    raise UsageError(f"device={device!r}: use device=cpu, cuda or cuda:N")


def _cuda_or_error(device: str, path: Path) -> None:
    """A UserError (one line, with the fix) unless torch sees the CUDA device ``device``."""
    import torch  # only for the torch and TensorRT backends, which import it anyway

    if not torch.cuda.is_available():
        raise UserError(f"{path}: device={device} but torch sees no CUDA GPU; use device=cpu")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise UserError(
            f"{path}: device={device} but torch sees {torch.cuda.device_count()} GPU(s); "
            "give cuda:0 .. cuda:N-1"
        )


def load_runtime(path: str | Path, device: str = "cpu", **kwargs: Any) -> Runtime:
    """Open a model by file suffix: .onnx (onnxruntime), .engine/.plan (tensorrt), .pth/.pt (torch)."""
    p = Path(path)
    if not p.is_file():
        hint = where_checkpoints_are(p) if p.suffix in (".pth", ".pt") else "give model=PATH"
        raise UserError(f"model file not found: {p}: {hint}")
    device = check_device(device)
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        return OnnxRuntime(p, device=device, **kwargs)
    if suffix in (".engine", ".plan", ".trt"):
        return TensorRTRuntime(p, device=device if device != "cpu" else "cuda", **kwargs)
    if suffix in (".pth", ".pt"):
        return TorchRuntime(p, device=device, **kwargs)
    raise UsageError(
        f"{p}: unknown model type {suffix!r}; give a .onnx, .engine/.plan or .pth/.pt file"
    )
