"""The training loop as plain functions: ``run`` -> ``train_one_epoch`` / ``evaluate``.

``run(cfg)`` is what ``python -m train`` (and every rank under torchrun) calls; tests call it
directly. One process per device; with ``WORLD_SIZE`` > 1 the model is wrapped in DDP, each rank
reads its shard of every epoch through a DistributedSampler, and only rank 0 writes the run
directory (checkpoints, TensorBoard, summary).

Run directory (``out_dir``, default ``runs/<name>``): a fixed path, the same on every rank and for
every launch of the same command, so ``resume=auto`` continues where a killed run stopped. It holds
``last.pth`` (every epoch), ``epoch_<N>.pth`` (every ``ckpt_every`` epochs and the last one; N is
the 0-based epoch index), ``config.yaml``, ``tb/`` and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from datasets import coco, synthetic
from datasets.auto_topology import stored_config
from datasets.cocofile import load_keypoint_file
from datasets.config import as_plain
from datasets.errors import UsageError, UserError
from datasets.files import atomic_write_text, resolve_path, where_checkpoints_are
from datasets.geometry import invert
from datasets.targets import TargetConfig, render_targets_torch
from datasets.topology import Topology
from inference.cocoeval import evaluate as coco_evaluate
from inference.cocoeval import ground_truth, skeletons_to_coco
from inference.decoder import build_decoder
from models.build import build_model
from models.checkpoint import load_checkpoint
from train import distributed as du
from train.checkpoint import (
    restore_training_state,
    save_checkpoint,
    training_state,
    unwrap_model,
)
from train.guards import (
    RunLock,
    check_resume,
    merge_summary,
    read_summary,
    validate_config,
    validate_process,
)
from train.setup import seed_everything, setup_process
from train.visual import prediction_panel

log = logging.getLogger("train")


# --------------------------------------------------------------------------- small pieces
def masked_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    name: str,
    foreground_weight: float = 0.0,
) -> torch.Tensor:
    """Mean of ``mask * (1 + foreground_weight * |target|) * (pred - target)^2`` over all elements.

    pred/target: (B, C, h, w); mask: (B, h, w) loss weights, broadcast over channels.
    ``foreground_weight`` 0 is trt_pose's loss. Keypoint and limb pixels are under 1% of a map,
    so from scratch a network first settles on predicting zero everywhere and leaves that plateau
    slowly; weighting pixels by ``1 + w * |target|`` (Gaussian peaks, PAF unit vectors) makes them
    count ``1 + w`` times as much. The optimum per pixel is still the target, so a flexible model
    converges to the same maps.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: model output {tuple(pred.shape)} and target {tuple(target.shape)} differ; "
            "check targets.stride against model.stride and data.input_size"
        )
    if mask.shape != (pred.shape[0], *pred.shape[2:]):
        raise ValueError(f"mask {tuple(mask.shape)} does not fit {name} {tuple(pred.shape)}")
    target = target.float()
    weight = mask[:, None]
    if foreground_weight:
        weight = weight * (1.0 + foreground_weight * target.abs())
    return (weight * (pred.float() - target).square()).mean()


def resolve_amp(amp: Any, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto`` = bf16 on CUDA when supported, else fp16; off on CPU.

    ``off``/false/null disables; ``bf16``/``fp16`` force one (fp16 needs CUDA).
    """
    if amp in (None, False, "off", "false", "none", "fp32"):
        return None
    if amp in ("auto", True, "true"):
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise UsageError("amp=fp16 needs CUDA; use amp=bf16 or amp=off on CPU")
        return torch.float16
    raise UsageError(f"amp={amp}: give auto, off, bf16 or fp16")


def build_optimizer(
    params: Iterable[nn.Parameter], cfg: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.optimizer`` (conf/optimizer: a ``_target_`` with ``_partial_``)."""
    return _configured("optimizer", cfg, params)


def build_scheduler(opt: torch.optim.Optimizer, cfg: Mapping[str, Any]) -> Any:
    """The per-epoch LR schedule of ``cfg.scheduler`` (conf/scheduler, ``_partial_``)."""
    return _configured("scheduler", cfg, opt)


def _configured(group: str, cfg: Mapping[str, Any], arg: Any) -> Any:
    """``instantiate(cfg)(arg)``; torch's own check of a value (``Invalid learning rate: -1``,
    a string where a number goes) becomes a one-line usage error naming the config group."""
    try:
        return instantiate(cfg)(arg)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{group} {cfg.get('_target_')}: {e}: fix the {group}.* override") from e


# --------------------------------------------------------------------------- data
def build_datasets(
    cfg: Mapping[str, Any], topology: Topology, dist: du.DistInfo
) -> tuple[Dataset, Dataset | None]:
    """Train and val datasets from ``cfg.data`` (the synthetic set is generated by rank 0 first)."""
    data = cfg["data"]
    if data.get("name") == "synthetic":
        if dist.is_main:
            synthetic.ensure(data)
        du.barrier()
    train_set = coco.build_dataset(cfg, "train", topology)
    val_set = coco.build_dataset(cfg, "val", topology) if data.get("val_annotations") else None
    return train_set, val_set


def make_loader(
    dataset: Dataset, cfg: Mapping[str, Any], dist: du.DistInfo, train: bool, collate_fn: Any = None
) -> DataLoader:
    """DataLoader over this rank's shard: DistributedSampler (also for one process, so a run's
    global batches are the same whatever the world size), workers with prefetch."""
    data = cfg["data"]
    sampler = DistributedSampler(
        dataset,
        num_replicas=dist.world_size,
        rank=dist.rank,
        shuffle=train and bool(data.get("shuffle", True)),
        seed=int(cfg.get("seed", 0)),
        drop_last=train,
    )
    workers = int(data.get("num_workers", 2))
    return DataLoader(
        dataset,
        batch_size=int(data.get("batch_size", 8)),
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn or coco.collate,
        pin_memory=dist.device.type == "cuda",
        drop_last=train,
        # fresh workers each epoch: their seeds follow the per-epoch seed, so a resumed run sees
        # the augmentations an uninterrupted one would have
        persistent_workers=False,
        prefetch_factor=int(data.get("prefetch_factor", 4)) if workers > 0 else None,
    )


# --------------------------------------------------------------------------- one epoch
@dataclass
class Context:
    """What the epoch functions share (built once by ``run``)."""

    cfg: dict[str, Any]
    dist: du.DistInfo
    topology: Topology
    targets: TargetConfig
    amp_dtype: torch.dtype | None
    channels_last: bool
    writer: Any = None  # SummaryWriter on rank 0
    decoder: Any = None
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    val_category: dict[str, Any] | None = None  # COCO category of the val file; None: no val AP

    @property
    def device(self) -> torch.device:
        return self.dist.device


def batch_to_device(
    batch: Mapping[str, Any], ctx: Context, map_hw: tuple[int, int]
) -> tuple[torch.Tensor, ...]:
    """images (B, 3, H, W), heatmap (B, K, h, w), paf (B, 2E, h, w), mask (B, h, w) on the device.

    Targets come from the batch, or with ``data.targets_on_device`` are rendered here from the
    padded keypoints (B, N, K, 3) with ``render_targets_torch``.
    """
    dev = ctx.device
    nb = dev.type == "cuda"
    images = batch["image"].to(dev, non_blocking=nb)
    if ctx.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if "heatmap" in batch and "paf" in batch:
        heat = batch["heatmap"].to(dev, non_blocking=nb)
        paf = batch["paf"].to(dev, non_blocking=nb)
    else:
        heat, paf = render_targets_torch(
            batch["keypoints"].to(dev, non_blocking=nb), ctx.topology, map_hw, ctx.targets
        )
    if "mask" in batch:
        mask = batch["mask"].to(dev, non_blocking=nb)
    else:
        mask = torch.ones(images.shape[0], *map_hw, device=dev)
    return images, heat, paf, mask


def compute_loss(
    model: nn.Module,
    images: torch.Tensor,
    heat_t: torch.Tensor,
    paf_t: torch.Tensor,
    mask: torch.Tensor,
    ctx: Context,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Forward under autocast; returns (total, heatmap term, PAF term, (heatmap, paf) outputs)."""
    amp = (
        torch.autocast(ctx.device.type, dtype=ctx.amp_dtype)
        if ctx.amp_dtype is not None
        else nullcontext()
    )
    with amp:
        heat, paf = model(images)  # (B, K, h, w), (B, 2E, h, w)
    lcfg = ctx.cfg.get("loss") or {}
    fg = float(lcfg.get("foreground_weight", 0.0))
    l_heat = masked_mse(heat, heat_t, mask, "heatmap", fg)
    l_paf = masked_mse(paf, paf_t, mask, "paf", fg)
    total = (
        float(lcfg.get("heatmap_weight", 1.0)) * l_heat + float(lcfg.get("paf_weight", 1.0)) * l_paf
    )
    return total, l_heat, l_paf, (heat, paf)


class LogWindow:
    """Loss sums and throughput over the steps since the last log line.

    One all-reduce per window, not per step, keeps logging off the critical path.
    """

    def __init__(self, device: torch.device) -> None:
        self.epoch_sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, heat, paf, n
        self.loss = torch.zeros(3, device=device, dtype=torch.float64)
        self.reset()

    def reset(self) -> None:
        self.loss.zero_()
        self.batches, self.images, self.wait = 0, 0, 0.0
        self.start, self.cpu = time.perf_counter(), time.process_time()

    def add(self, loss: torch.Tensor, l_heat: torch.Tensor, l_paf: torch.Tensor, n: int) -> None:
        self.loss += torch.stack([loss.detach(), l_heat.detach(), l_paf.detach()]).double()
        self.batches += 1
        self.images += n

    def row(self, ctx: Context, epoch: int, lr: float) -> dict[str, Any]:
        """The window's means over all ranks (a collective: every rank calls it), then reset."""
        red = du.all_reduce_sum(torch.cat([self.loss, self.loss.new_tensor([self.batches])]))
        self.epoch_sums += red
        mean = (red[:3] / red[3]).tolist()
        dt = max(time.perf_counter() - self.start, 1e-9)
        row = {
            "step": ctx.step,
            "epoch": epoch,
            "loss": mean[0],
            "loss_heatmap": mean[1],
            "loss_paf": mean[2],
            "lr": lr,
            "images_per_s": self.images * ctx.dist.world_size / dt,
            "data_wait": self.wait / dt,
            # this process's CPU seconds (all threads): a cost figure that, unlike wall time,
            # other programs on a shared machine barely disturb
            "cpu_s": time.process_time() - self.cpu,
        }
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(
                f"training loss is {row['loss']} at step {ctx.step} (epoch {epoch})"
            )
        self.reset()
        return row

    def epoch_means(self) -> dict[str, float]:
        total = self.epoch_sums[:3] / self.epoch_sums[3].clamp_min(1)
        return {
            "loss": float(total[0]),
            "loss_heatmap": float(total[1]),
            "loss_paf": float(total[2]),
        }


def _epoch_batches(loader: DataLoader, cfg: Mapping[str, Any], epoch: int, world: int) -> int:
    """Micro-batches this epoch: the loader's, capped by ``steps_per_epoch``, whole steps only."""
    accum = max(int(cfg["grad_accum"]), 1)
    limit = cfg.get("steps_per_epoch")
    n_batches = len(loader) if not limit else min(len(loader), int(limit) * accum)
    n_batches -= n_batches % accum
    if n_batches == 0:
        raise UserError(
            f"no full batch in epoch {epoch}: {len(loader.dataset)} samples, batch_size "
            f"{loader.batch_size} x grad_accum {accum} x world {world}: lower data.batch_size "
            "or grad_accum"
        )
    return n_batches


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    epoch: int,
    ctx: Context,
) -> dict[str, float]:
    """One pass over this rank's shard; returns epoch means (averaged over ranks)."""
    cfg = ctx.cfg
    model.train()
    accum = max(int(cfg["grad_accum"]), 1)
    n_batches = _epoch_batches(loader, cfg, epoch, ctx.dist.world_size)
    map_hw = _map_size(cfg, model)
    log_every, image_every = int(cfg["log_every"]), int(cfg["image_every"] or 0)
    window = LogWindow(ctx.device)
    bar = tqdm(
        total=n_batches // accum,
        desc=f"epoch {epoch}",
        disable=not ctx.dist.is_main,
        dynamic_ncols=True,
        leave=False,
    )
    it = iter(loader)
    optimizer.zero_grad(set_to_none=True)
    skipped = 0  # bad images the loader replaced (datasets.coco skip-and-count)
    for i in range(n_batches):
        t0 = time.perf_counter()
        batch = next(it)
        window.wait += time.perf_counter() - t0
        skipped += int(batch.get("skipped", 0))
        images, heat_t, paf_t, mask = batch_to_device(batch, ctx, map_hw)
        last_micro = (i + 1) % accum == 0
        # DDP: all-reduce gradients only on the micro-batch that ends an optimizer step
        sync = model.no_sync() if (ctx.dist.distributed and not last_micro) else nullcontext()
        with sync:
            loss, l_heat, l_paf, outputs = compute_loss(model, images, heat_t, paf_t, mask, ctx)
            scaler.scale(loss / accum).backward()
        window.add(loss, l_heat, l_paf, images.shape[0])
        if not last_micro:
            continue
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        ctx.step += 1
        bar.update(1)
        if ctx.step % log_every == 0 or i + 1 == n_batches:
            row = window.row(ctx, epoch, optimizer.param_groups[0]["lr"])
            _log_row(row, ctx, bar)
        if ctx.writer is not None and image_every and ctx.step % image_every == 0:
            log_images(ctx, "train", images[0], outputs, heat_t[0])
    bar.close()
    del it  # stop this epoch's workers now
    skipped = int(du.all_reduce_sum(torch.tensor([float(skipped)], device=ctx.device)).item())
    return {**window.epoch_means(), "skipped_images": skipped}


def _map_size(cfg: Mapping[str, Any], model: nn.Module) -> tuple[int, int]:
    """(h, w) of the output maps for ``data.input_size``."""
    (h, w), stride = cfg["data"]["input_size"], unwrap_model(model).stride
    return h // stride, w // stride


def _log_row(row: dict[str, Any], ctx: Context, bar: Any) -> None:
    ctx.history.append(row)
    bar.set_postfix(loss=f"{row['loss']:.3g}", ips=f"{row['images_per_s']:.1f}", refresh=False)
    if ctx.writer is not None:
        for key in ("loss", "loss_heatmap", "loss_paf", "lr", "images_per_s", "data_wait"):
            ctx.writer.add_scalar(f"train/{key}", row[key], ctx.step)


def log_images(
    ctx: Context,
    tag: str,
    image: torch.Tensor,
    outputs: tuple[torch.Tensor, torch.Tensor],
    target_heat: torch.Tensor | None,
) -> None:
    """One panel (targets, predictions, decoded skeletons) for the first sample of a batch."""
    heat = outputs[0][0].detach().float().cpu().numpy()  # (K, h, w)
    paf = outputs[1][0].detach().float().cpu().numpy()  # (2E, h, w)
    skeletons = None
    if ctx.decoder is not None:
        skeletons = ctx.decoder(heat, paf, output_scale=list(image.shape[-2:]))
    tgt = None if target_heat is None else target_heat.detach().float().cpu().numpy()
    panel = prediction_panel(image, heat, paf, ctx.topology, skeletons, tgt)
    ctx.writer.add_image(f"{tag}/prediction", panel, ctx.step, dataformats="HWC")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, ctx: Context) -> dict[str, float]:
    """Validation loss over this rank's shard (averaged over ranks) and, when the decoder is
    available and ``val_ap`` is on, COCO keypoint AP of the decoded predictions (rank 0)."""
    cfg = ctx.cfg
    model.eval()
    input_hw = tuple(cfg["data"]["input_size"])
    map_hw = _map_size(cfg, model)
    limit = cfg.get("val_steps")
    sums = torch.zeros(5, device=ctx.device, dtype=torch.float64)  # 3 losses, images, skipped
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    want_ap = ctx.val_category is not None and ctx.decoder is not None
    first = None
    for i, batch in enumerate(
        tqdm(loader, desc="val", disable=not ctx.dist.is_main, leave=False, dynamic_ncols=True)
    ):
        if limit and i >= int(limit):
            break
        images, heat_t, paf_t, mask = batch_to_device(batch, ctx, map_hw)
        loss, l_heat, l_paf, (heat, paf) = compute_loss(model, images, heat_t, paf_t, mask, ctx)
        n = images.shape[0]
        skipped = loss.new_tensor(float(batch.get("skipped", 0)))
        sums += torch.stack(
            [loss * n, l_heat * n, l_paf * n, loss.new_tensor(float(n)), skipped]
        ).double()
        if first is None:
            first = (images[0], (heat[:1], paf[:1]), heat_t[0])
        if want_ap:
            res, ids = _decode_to_coco(heat, paf, batch, input_hw, ctx)
            results += res
            image_ids += ids
    sums = du.all_reduce_sum(sums)
    out = {
        "val_loss": float(sums[0] / sums[3].clamp_min(1)),
        "val_loss_heatmap": float(sums[1] / sums[3].clamp_min(1)),
        "val_loss_paf": float(sums[2] / sums[3].clamp_min(1)),
        "val_skipped_images": int(sums[4]),
    }
    if want_ap:
        gathered = du.all_gather_objects((results, image_ids))
        if ctx.dist.is_main:
            res = [r for part in gathered for r in part[0]]
            ids = [i for part in gathered for i in part[1]]
            out.update(_coco_ap(res, ids, cfg))
    if ctx.writer is not None:
        for k, v in out.items():
            ctx.writer.add_scalar(f"val/{k}", v, ctx.step)
        if first is not None and cfg.get("image_every"):
            log_images(ctx, "val", first[0], first[1], first[2])
    return out


def _decode_to_coco(
    heat: torch.Tensor,
    paf: torch.Tensor,
    batch: Mapping[str, Any],
    input_hw: tuple[int, int],
    ctx: Context,
) -> tuple[list[dict], list[int]]:
    """Decode a batch; COCO results in original-image pixels, and the batch's image ids."""
    heat_np = heat.float().cpu().numpy()  # (B, K, h, w)
    paf_np = paf.float().cpu().numpy()  # (B, 2E, h, w)
    results, ids = [], []
    for b in range(heat_np.shape[0]):
        # decoder output in input pixels; the inverse of the sample's fit maps them to the image
        skels = ctx.decoder(heat_np[b], paf_np[b], output_scale=list(input_hw))
        image_id = int(batch["image_id"][b])
        back = invert(batch["matrix"][b].numpy())
        results += skeletons_to_coco(
            skels, image_id, ctx.topology, ctx.val_category, transform=back
        )
        ids.append(image_id)
    return results, ids


def _coco_ap(results: list[dict], image_ids: list[int], cfg: Mapping[str, Any]) -> dict[str, float]:
    """COCO keypoint AP/AR of ``results`` on ``image_ids`` against ``data.val_annotations``."""
    gt, _, sigmas = _COCO_CACHE[str(cfg["data"]["val_annotations"])]
    stats = coco_evaluate(
        gt, results, image_ids=sorted(set(image_ids)), sigmas=sigmas, verbose=False
    )
    return {"val_ap": stats["AP"], "val_ap50": stats["AP50"], "val_ar": stats["AR"]}


_COCO_CACHE: dict[str, Any] = {}


def _val_truth(cfg: Mapping[str, Any], topology: Topology) -> tuple[Any, dict, Any]:
    """(COCO, category, OKS sigmas) of the validation file, read once by the shared reader."""
    path = str(cfg["data"]["val_annotations"])
    if path not in _COCO_CACHE:
        kfile = load_keypoint_file(path, cfg.get("category"), bool(cfg.get("strict", True)))
        keypoint_map = (cfg.get("topology") or {}).get("keypoint_map")
        _COCO_CACHE[path] = ground_truth(kfile, topology, keypoint_map)
    return _COCO_CACHE[path]


# --------------------------------------------------------------------------- run
def resolve_resume(resume: Any, out_dir: Path) -> Path | None:
    """``auto``: out_dir/last.pth if it exists; null/false: none (refuse to overwrite a run);
    a path: that checkpoint."""
    last = out_dir / "last.pth"
    if resume in (None, False, "null", "none", ""):
        if last.exists():
            raise RunExists(
                f"{out_dir} already holds a run ({last.name}); continue it with resume=auto, or "
                "pick a new out_dir=... / name=..."
            )
        return None
    if resume == "auto":
        return last if last.exists() else None
    path = Path(str(resume)).expanduser()
    if not path.is_file():
        raise UserError(f"resume={resume}: no such checkpoint: {where_checkpoints_are(path)}")
    return path


class RunExists(UserError, FileExistsError):
    """``resume=null`` on an out_dir that already holds a run."""


def lock_run_dir(out: Path, dist: du.DistInfo) -> RunLock | None:
    """Rank 0 locks ``out`` (``train.guards.RunLock``) for the whole run; every rank learns
    whether it could, so a refused launch stops on all ranks with the same one line."""
    lock, refusal = None, None
    if dist.is_main:
        try:
            lock = RunLock(out).acquire()
        except UserError as e:
            refusal = str(e)
    refusal = du.broadcast_object(refusal)
    if refusal is not None:
        raise UserError(refusal)
    return lock


def run_dir(cfg: Mapping[str, Any], out_dir: str | Path | None) -> Path:
    """The run directory, absolute, the same on every rank (rank 0's view of it wins)."""
    out = resolve_path(out_dir or cfg.get("out_dir") or f"runs/{cfg['name']}")
    # every rank must agree on the run dir (a relative path + different cwd would split it)
    return Path(du.broadcast_object(str(out)))


def resume_point(resume: Any, out: Path, dist: du.DistInfo) -> Path | None:
    """The checkpoint to resume from (``resolve_resume``), decided by rank 0 and followed by
    every rank, which must see the same file."""
    decision: tuple = ()
    if dist.is_main:
        try:
            found = resolve_resume(resume, out)
            decision = ("ok", str(found) if found else None)
        except UserError as e:
            decision = (type(e).__name__, str(e))
    decision = du.broadcast_object(decision)
    if decision[0] != "ok":
        raise (RunExists if decision[0] == "RunExists" else UserError)(decision[1])
    path = Path(decision[1]) if decision[1] else None
    if path is not None and not path.is_file():
        raise UserError(
            f"rank {dist.rank} cannot see {path}, which rank 0 resumes from: out_dir must be on "
            "storage that every node mounts at the same path"
        )
    return path


def wants_val_ap(cfg: Mapping[str, Any], val_set: Dataset | None) -> bool:
    """COCO AP on validation: asked for, and there is ground truth in a COCO file."""
    val_ann = (cfg.get("data") or {}).get("val_annotations")
    return bool(cfg["val_ap"] and val_set is not None and val_ann and Path(val_ann).is_file())


def build_training_model(
    cfg: Mapping[str, Any], topology: Topology, targets: TargetConfig, device: torch.device
) -> tuple[nn.Module, bool]:
    """The model from ``cfg.model`` on ``device`` (channels_last on CUDA by default); returns it
    and whether channels_last is on."""
    model = build_model(cfg["model"], topology)
    if model.stride != targets.stride:
        raise ValueError(
            f"targets.stride={targets.stride} but model.stride={model.stride}; they must match"
        )
    model.to(device)
    channels_last = cfg["channels_last"]
    channels_last = device.type == "cuda" if channels_last == "auto" else bool(channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


def wrap_model(model: nn.Module, cfg: Mapping[str, Any], dist: du.DistInfo) -> nn.Module:
    """DDP (with SyncBatchNorm when asked, CUDA only) and ``torch.compile`` around ``model``."""
    wrapped = model
    if dist.distributed:
        if cfg["sync_bn"] and dist.device.type == "cuda":
            wrapped = nn.SyncBatchNorm.convert_sync_batchnorm(wrapped)
        elif cfg["sync_bn"]:
            log.warning("sync_bn needs CUDA (PyTorch's SyncBatchNorm); ignored on %s", dist.device)
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
        )
    return torch.compile(wrapped) if cfg["compile"] else wrapped


def open_run_dir(out: Path, cfg: Mapping[str, Any], step: int) -> Any:
    """Rank 0: create the run dir, clear interrupted temp files, write config.yaml; returns the
    TensorBoard writer (continuing at ``step`` after a resume)."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # a write that a kill interrupted; never a checkpoint
        stale.unlink(missing_ok=True)
    atomic_write_text(out / "config.yaml", _yaml(cfg))
    return SummaryWriter(str(out / "tb"), purge_step=step if step else None)


def run(
    cfg: Any,
    out_dir: str | Path | None = None,
    train_set: Dataset | None = None,
    val_set: Dataset | None = None,
    collate_fn: Any = None,
) -> dict[str, Any]:
    """Train per ``cfg`` (a DictConfig or the same as plain dicts); returns the run summary.

    ``train_set``/``val_set``/``collate_fn`` replace the datasets the ``data`` config would build
    (tests and benchmarks); batches are dicts as ``datasets.coco.collate`` makes them.
    """
    cfg = as_plain(cfg)
    validate_process(cfg)
    dist = du.init_distributed(str(cfg["device"]), float(cfg.get("ddp_timeout_s") or 600))
    lock = None
    try:
        out = run_dir(cfg, out_dir)
        lock = lock_run_dir(out, dist)
        summary = train(cfg, dist, out, train_set, val_set, collate_fn)
        # ranks leave together: a rank that tears down its gloo connections while rank 0 is
        # still writing the summary can abort rank 0's teardown ("terminate called without an
        # active exception", seen once in CI); after an error there is no barrier (it could hang)
        du.barrier()
        return summary
    finally:
        if lock is not None:
            lock.release()
        du.cleanup()


def resume_states(
    path: Path | None, cfg: Mapping[str, Any], states: tuple, device: torch.device
) -> tuple[int, int]:
    """(first epoch to run, optimizer steps done): (0, 0) for a fresh run; else the checkpoint at
    ``path`` (checked to be the same model, input size and topology) is loaded into ``states``
    (model, optimizer, scheduler, scaler)."""
    if path is None:
        return 0, 0
    ckpt = load_checkpoint(path, map_location=device)
    check_resume(ckpt["config"], cfg, path)
    start_epoch, step = restore_training_state(ckpt, *states, path)
    log.info("resumed from %s: epoch %d done, step %d", path, start_epoch - 1, step)
    return start_epoch, step


def train(cfg, dist, out, train_set=None, val_set=None, collate_fn=None) -> dict[str, Any]:
    """Set up, find the resume point, then per epoch: train_one_epoch, evaluate, checkpoint."""
    setup_process(dist.rank, dist.device, cfg["threads"], bool(cfg["deterministic"]))
    topology = coco.training_topology(cfg)
    # the topology node resolved (topology=auto derived from the data): what config.yaml and the
    # checkpoints carry, so export and inference never derive it again
    cfg["topology"] = stored_config(topology, cfg["topology"])
    targets = TargetConfig.from_config(cfg.get("targets"))
    validate_config(cfg, targets.stride)
    resume_path = resume_point(cfg["resume"], out, dist)
    if train_set is None:
        train_set, val_set = build_datasets(cfg, topology, dist)
    # the same initial weights on every rank (DDP also broadcasts rank 0's)
    seed_everything(cfg["seed"])
    model, channels_last = build_training_model(cfg, topology, targets, dist.device)
    amp_dtype = resolve_amp(cfg["amp"], dist.device)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=amp_dtype == torch.float16)
    optimizer = build_optimizer(model.parameters(), cfg["optimizer"])
    scheduler = build_scheduler(optimizer, cfg["scheduler"])
    states = (model, optimizer, scheduler, scaler)
    start_epoch, step = resume_states(resume_path, cfg, states, dist.device)
    wrapped = wrap_model(model, cfg, dist)
    writer = open_run_dir(out, cfg, step) if dist.is_main else None
    decoder = build_decoder(cfg.get("decoder") or {}, topology)
    ctx = Context(cfg, dist, topology, targets, amp_dtype, channels_last, writer, decoder, step)
    ctx.val_category = _val_category(cfg, topology) if wants_val_ap(cfg, val_set) else None
    train_loader = make_loader(train_set, cfg, dist, True, collate_fn)
    val_loader = make_loader(val_set, cfg, dist, False, collate_fn) if val_set is not None else None
    log.info(
        "training %s on %s x%d: %d samples, epochs %d..%d, amp=%s, out_dir=%s",
        *(model.name, dist.device, dist.world_size, len(train_set), start_epoch),
        *(cfg["epochs"] - 1, amp_dtype, out),
    )
    summary: dict[str, Any] = {"out_dir": str(out), "world_size": dist.world_size, "epochs": []}
    summary["resumed_from"] = {"epoch": start_epoch, "step": step}
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg["epochs"]):
        train_loader.sampler.set_epoch(epoch)
        # per-epoch, per-rank seed: different augmentations on each rank, reproducible on resume
        seed_everything(cfg["seed"] + 1000 * epoch + dist.rank)
        stats = train_one_epoch(wrapped, train_loader, optimizer, scaler, epoch, ctx)
        scheduler.step()
        du.broadcast_buffers(model)
        row = {"epoch": epoch, "step": ctx.step, **stats}
        if val_loader is not None and _validates(cfg, epoch):
            row.update(evaluate(model, val_loader, ctx))
        summary["epochs"].append(_log_epoch(row, ctx))
        if dist.is_main:
            state = training_state(
                epoch, ctx.step, model, optimizer, scheduler, scaler, cfg, dist.world_size
            )
            for name in _checkpoint_names(cfg, epoch):
                save_checkpoint(out / name, state)
        du.barrier()
    summary.update(step=ctx.step, minutes=(time.perf_counter() - t_start) / 60)
    return _finish(summary, model, ctx, out)


def _validates(cfg: Mapping[str, Any], epoch: int) -> bool:
    """Validate every ``val_every`` epochs (0: never) and after the last one."""
    every = int(cfg["val_every"] or 0)
    return bool(every) and ((epoch + 1) % every == 0 or epoch + 1 == cfg["epochs"])


def _checkpoint_names(cfg: Mapping[str, Any], epoch: int) -> list[str]:
    """``epoch_<N>.pth`` every ``ckpt_every`` epochs and at the end; ``last.pth`` every epoch, last,
    so that a kill after it resumes at epoch + 1."""
    every = max(int(cfg["ckpt_every"]), 1)
    keep = (epoch + 1) % every == 0 or epoch + 1 == cfg["epochs"]
    return [f"epoch_{epoch}.pth", "last.pth"] if keep else ["last.pth"]


def _log_epoch(row: dict[str, Any], ctx: Context) -> dict[str, Any]:
    if ctx.writer is not None:
        ctx.writer.add_scalar("epoch/loss", row["loss"], ctx.step)
    summary = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
    log.info("epoch %d: %s", row["epoch"], summary)
    return row


def _finish(summary: dict[str, Any], model: nn.Module, ctx: Context, out: Path) -> dict[str, Any]:
    """Replica check, history, and (rank 0) summary.json; closes the writer."""
    if summary["epochs"] == [] and ctx.dist.is_main:
        log.info("nothing to do: %s already finished %d epochs", out, ctx.cfg["epochs"])
    summary["replica_checksums"] = du.check_replicas_in_sync(model)
    summary["skipped_images"] = {
        "train": sum(r.get("skipped_images", 0) for r in summary["epochs"]),
        "val": sum(r.get("val_skipped_images", 0) for r in summary["epochs"]),
    }
    if any(summary["skipped_images"].values()):
        log.warning(
            "skipped unusable images (see the warnings): %d in training, %d in validation",
            *summary["skipped_images"].values(),
        )
    summary["history"] = ctx.history
    if ctx.writer is not None:
        ctx.writer.close()
    if ctx.dist.is_main:
        # the file keeps earlier invocations' epochs and log rows; the return value is this one's
        start = summary["resumed_from"]
        merged = merge_summary(
            read_summary(out / "summary.json"), summary, start["epoch"], start["step"]
        )
        atomic_write_text(out / "summary.json", json.dumps(merged, indent=1))
    return summary


def _yaml(cfg: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False)


def _val_category(cfg: Mapping[str, Any], topology: Topology) -> dict[str, Any]:
    """The COCO keypoint category of the validation annotations."""
    return _val_truth(cfg, topology)[1]
