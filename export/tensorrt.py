"""python -m export.tensorrt onnx=model.onnx precision=fp32|fp16|int8 [calibration.images=DIR]

Builds and serialises a TensorRT engine from an exported ONNX model with the TensorRT Python
API: ONNX parser, an optimisation profile over the batch dimension (dynamic-batch exports), a
workspace memory limit, a timing cache kept between builds, FP16 / INT8 builder flags and, for
INT8, entropy calibration (IInt8EntropyCalibrator2) on a folder of images pre-processed exactly
as at inference, with a calibration cache. Beside ``model.engine`` it writes
``model.engine.json``: the model's metadata (copied from the ONNX file, read by
``inference.runtime``) and the TensorRT, CUDA and GPU versions the engine was built with
(engines only run on the TensorRT version and GPU they were built for).

Needs a CUDA GPU and the ``tensorrt`` package (``pip install '.[trt]'``); without them it
refuses with a clear message and exit code 3. FP16 flags and INT8 calibrators are TensorRT 10
API (deprecated there since 10.1, removed in TensorRT 11, where this refuses fp16/int8 clearly).
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError  # what onnx.load raises on a non-ONNX file
from omegaconf import DictConfig

from datasets.config import as_plain, whole_number
from datasets.errors import UsageError, UserError, user_errors
from datasets.files import atomic_path, list_images, resolve_path, write_json
from datasets.images import read_rgb
from inference.runtime import engine_sidecar
from models.contract import INPUT_NAME, ModelInfo, preprocess_image

log = logging.getLogger("export.tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
EXIT_UNAVAILABLE = 3


class TensorRTUnavailable(RuntimeError):
    """No CUDA GPU or no tensorrt package here."""


def require_tensorrt():
    """The imported ``tensorrt`` module, or TensorRTUnavailable saying what is missing."""
    if not torch.cuda.is_available():
        raise TensorRTUnavailable(
            "building a TensorRT engine needs a CUDA GPU, and torch sees none here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). Use the ONNX model with "
            "ONNX Runtime on this machine, or build the engine on the target GPU."
        )
    try:  # optional dependency (the `trt` extra), on GPU machines only
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            f"the `tensorrt` Python package is not installed ({e}); install it with "
            "`pip install '.[trt]'` on the machine with the target GPU"
        ) from None
    return trt


def versions() -> dict[str, Any]:
    """TensorRT, CUDA, driver and GPU versions for the engine's sidecar JSON."""
    trt = require_tensorrt()
    dev = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(dev)
    return {
        "tensorrt": trt.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(dev),
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_bytes": int(props.total_memory),
        "driver": _driver_version(),
        "host": platform.node(),
    }


def _driver_version() -> str | None:
    try:
        from cuda.bindings import driver  # cuda-python, shipped with recent torch CUDA builds

        err, v = driver.cuDriverGetVersion()
        return f"{v // 1000}.{(v % 1000) // 10}" if int(err) == 0 else None
    except Exception:  # noqa: BLE001 - purely informative
        return None


def read_onnx_info(path: Path) -> tuple[ModelInfo, dict[str, str], list]:
    """ModelInfo, raw metadata and the input's shape (ints or names) of an exported ONNX file."""
    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    info = ModelInfo.from_metadata(props, source=str(path))
    inputs = [i for i in proto.graph.input if i.name == INPUT_NAME]
    if not inputs:
        raise ValueError(
            f"{path}: no input named {INPUT_NAME!r}; export it with `python -m export`"
        )
    dims = [
        d.dim_value if d.HasField("dim_value") else d.dim_param
        for d in inputs[0].type.tensor_type.shape.dim
    ]
    return info, props, dims


def make_calibrator(trt, info: ModelInfo, images: Sequence[Path], batch_size: int, cache: Path):
    """An IInt8EntropyCalibrator2 feeding pre-processed images through a torch CUDA buffer."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.files = list(images)
            self.index = 0
            h, w = info.input_size
            self.buffer = torch.empty((batch_size, 3, h, w), dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index + batch_size > len(self.files):
                return None
            chunk = self.files[self.index : self.index + batch_size]
            self.index += batch_size
            x = np.stack([preprocess_image(read_rgb(f), info)[0] for f in chunk])  # (B, 3, H, W)
            self.buffer.copy_(torch.from_numpy(x))
            log.info(
                "calibration batch %d/%d", self.index // batch_size, len(self.files) // batch_size
            )
            return [int(self.buffer.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data) -> None:
            with atomic_path(cache) as tmp:
                tmp.write_bytes(bytes(data))

    return EntropyCalibrator()


def build_engine(
    onnx_path: str | Path,
    output: str | Path,
    *,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 8,
    workspace_mib: int = 1024,
    timing_cache: str | Path | None = None,
    calibration_images: str | Path | None = None,
    calibration_count: int = 256,
    calibration_batch: int = 8,
    calibration_cache: str | Path | None = None,
) -> Path:
    """Build ``output`` (serialised engine, written atomically) and its sidecar JSON."""
    # Over 60 lines on purpose: TensorRT's builder API is one sequence of calls on a builder,
    # network, parser, profile and config that must stay alive together; split up, every piece
    # would pass the same five handles around. GPU-only, so it is tested on GPU machines only.
    trt = require_tensorrt()
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    onnx_path, output = Path(onnx_path), Path(output)
    info, props, dims = read_onnx_info(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path.parent)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    # the timing cache makes rebuilds (other precision, other batch range) much faster
    cache_path = Path(timing_cache) if timing_cache else output.with_name("timing.cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    h, w = info.input_size
    profile = builder.create_optimization_profile()
    if isinstance(dims[0], int) and dims[0] > 0:  # static batch export: the profile is fixed
        min_batch = opt_batch = max_batch = dims[0]
    if not (1 <= min_batch <= opt_batch <= max_batch):
        raise ValueError(
            f"need 1 <= min_batch <= opt_batch <= max_batch; got {min_batch}, {opt_batch}, {max_batch}"
        )
    profile.set_shape(INPUT_NAME, (min_batch, 3, h, w), (opt_batch, 3, h, w), (max_batch, 3, h, w))
    config.add_optimization_profile(profile)

    if precision in ("fp16", "int8"):
        if not hasattr(trt.BuilderFlag, precision.upper()):
            # TensorRT 11 dropped the implicit-precision flags and calibrators
            raise TensorRTUnavailable(
                f"TensorRT {trt.__version__} has no BuilderFlag.{precision.upper()} (removed in "
                "TensorRT 11: strong typing and explicit Q/DQ quantisation only); use TensorRT "
                "10.x (pip install 'tensorrt>=10,<11') for precision=fp16/int8"
            )
        # platform_has_fast_* are deprecated since TensorRT 10.5: informative only
        if not getattr(builder, "platform_has_fast_fp16", True):
            log.warning("this GPU has no fast FP16; the engine may not be faster than FP32")
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if not getattr(builder, "platform_has_fast_int8", True):
            log.warning("this GPU has no fast INT8; the engine may not be faster")
        folder = Path(calibration_images) if calibration_images else None
        files = list_images(folder)[:calibration_count] if folder and folder.is_dir() else []
        calib_cache = (
            Path(calibration_cache)
            if calibration_cache
            else output.with_name(output.stem + ".calib.cache")
        )
        if len(files) < calibration_batch and not calib_cache.is_file():
            raise ValueError(
                f"INT8 needs calibration images: {folder} has {len(files)} (need >= "
                f"{calibration_batch}) and there is no calibration cache at {calib_cache}"
            )
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = make_calibrator(trt, info, files, calibration_batch, calib_cache)
        calib_profile = builder.create_optimization_profile()
        shape = (calibration_batch, 3, h, w)
        calib_profile.set_shape(INPUT_NAME, shape, shape, shape)
        config.set_calibration_profile(calib_profile)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build the engine (see the log above)")
    with atomic_path(output) as tmp:
        tmp.write_bytes(bytes(serialized))
    with atomic_path(cache_path) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    write_json(
        engine_sidecar(output),
        {
            "metadata": props,
            "precision": precision,
            "batch": {"min": min_batch, "opt": opt_batch, "max": max_batch},
            "workspace_mib": int(workspace_mib),
            "source_onnx": str(onnx_path),
            "build_seconds": round(time.perf_counter() - start, 1),
            "versions": versions(),
        },
        indent=2,
    )
    return output


def run(cfg: Mapping[str, Any]) -> Path:
    """Build the engine described by ``cfg`` (see conf/tensorrt.yaml)."""
    cfg = as_plain(cfg)
    onnx_path = resolve_path(cfg.get("onnx"))
    if onnx_path is None:
        raise UsageError("give the ONNX model: python -m export.tensorrt onnx=path/to/model.onnx")
    if not onnx_path.is_file():
        raise UserError(
            f"ONNX model not found: {onnx_path}: export one first (python -m export "
            "ckpt=runs/<name>/epoch_N.pth), then give onnx=path/to/model.onnx"
        )
    options = build_options(cfg, onnx_path)
    output = resolve_path(cfg.get("output")) or onnx_path.with_name(
        f"{onnx_path.stem}.{options['precision']}.engine"
    )
    calib = cfg.get("calibration") or {}
    path = build_engine(
        onnx_path,
        output,
        **options,
        timing_cache=resolve_path(cfg.get("timing_cache")),
        calibration_images=resolve_path(calib.get("images")),
        calibration_cache=resolve_path(calib.get("cache")),
    )
    print(f"wrote {path} and {engine_sidecar(path).name}")
    return path


def build_options(cfg: Mapping[str, Any], onnx_path: Path) -> dict[str, Any]:
    """``build_engine``'s precision, batch range, workspace and calibration sizes from the
    config, and the ONNX file read once: checked here, on any machine, before TensorRT and a GPU
    are needed (one-line usage errors)."""
    precision = str(cfg.get("precision", "fp16"))
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    batch, calib = cfg.get("batch") or {}, cfg.get("calibration") or {}
    sizes = {
        "min_batch": whole_number(batch, "min", 1, name="batch.min"),
        "opt_batch": whole_number(batch, "opt", 1, name="batch.opt"),
        "max_batch": whole_number(batch, "max", 8, name="batch.max"),
        "workspace_mib": whole_number(cfg, "workspace_mib", 1024),
        "calibration_count": whole_number(calib, "count", 256, name="calibration.count"),
        "calibration_batch": whole_number(calib, "batch_size", 8, name="calibration.batch_size"),
    }
    if not sizes["min_batch"] <= sizes["opt_batch"] <= sizes["max_batch"]:
        raise UsageError(
            f"need batch.min <= batch.opt <= batch.max; got {sizes['min_batch']}, "
            f"{sizes['opt_batch']}, {sizes['max_batch']}"
        )
    try:
        read_onnx_info(onnx_path)
    except DecodeError as e:
        raise UserError(
            f"{onnx_path}: not an ONNX file ({e}); give the .onnx written by python -m export"
        ) from None
    except ValueError as e:  # no metadata or input name of ours: the message names the fix
        raise UserError(str(e)) from None
    return {"precision": precision, **sizes}


@hydra.main(version_base="1.3", config_path="../conf", config_name="tensorrt")
@user_errors
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except TensorRTUnavailable as e:
        print(f"export.tensorrt: {e}", file=sys.stderr)
        sys.exit(EXIT_UNAVAILABLE)


if __name__ == "__main__":
    main()
