"""DDP under torchrun: process group from the environment, small collectives, replica checks.

``torchrun --nproc_per_node=N -m train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and
``MASTER_ADDR``/``MASTER_PORT``); multi-node runs add ``--nnodes``, ``--node_rank`` or a rendezvous
(``--rdzv_backend=c10d --rdzv_endpoint=HOST:PORT``). Without those variables everything here is
a no-op for a single process. NCCL on CUDA, gloo on CPU.

Faults: joining the group and every collective wait at most ``timeout_s`` (``ddp_timeout_s``,
10 minutes by default; torch's own is 30) for the other ranks, so a dead or hung rank ends the
run instead of holding the others; and each rank watches its torchrun agent (its parent
process): when the agent dies, the rank exits rather than train on unsupervised.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from datasets.errors import UserError

log = logging.getLogger("train")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; else the given device."""
    if device in (None, "auto"):
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device={device} requested but CUDA is not available; use device=cpu")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device: str = "auto", timeout_s: float = 600) -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (collectives time out after
    ``timeout_s``) and watch the torchrun agent; returns this process's DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
        log.info("joined process group: backend=%s world_size=%d", backend, world)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun's agent, our parent
        watch_parent()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def watch_parent(interval_s: float = 2.0) -> threading.Thread:
    """A daemon thread that ends this process (exit code 1) when its parent, the torchrun agent,
    is gone: the process is then re-parented, so ``os.getppid()`` changes. ``os._exit``, because
    the main thread may be blocked in a collective; checkpoints are atomic, so this loses at most
    the epoch in progress."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        print(
            f"error: rank {os.environ.get('RANK', '?')}: the torchrun agent (pid {parent}) is "
            "gone; exiting (rerun the same command to resume from last.pth)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)

    thread = threading.Thread(target=watch, name="watch-torchrun-agent", daemon=True)
    thread.start()
    return thread


def cleanup() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a copy; ``t`` unchanged)."""
    t = t.detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. the run directory rank 0 chose)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def parameter_checksum(model: torch.nn.Module) -> float:
    """A float64 fingerprint of the parameters (sum of |w|, weighted by tensor position)."""
    total = 0.0
    for i, t in enumerate(model.parameters()):
        total += float(t.detach().double().abs().sum()) * (1 + 1e-3 * i)
    return total


def broadcast_buffers(model: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    Each rank updates running statistics from its own batches; DDP re-broadcasts them at the
    next forward, but validation and checkpoints should see one set.
    """
    if dist.is_available() and dist.is_initialized():
        for b in model.buffers():
            dist.broadcast(b.data, src=src)


def check_replicas_in_sync(model: torch.nn.Module, rtol: float = 1e-9) -> list[float]:
    """Gather every rank's parameter checksum; raise if the replicas have drifted apart."""
    sums = all_gather_objects(parameter_checksum(model))
    ref = sums[0]
    bad = [r for r, s in enumerate(sums) if abs(s - ref) > rtol * max(abs(ref), 1.0)]
    if bad:
        raise RuntimeError(f"DDP replicas out of sync: ranks {bad} differ from rank 0 ({sums})")
    return sums
