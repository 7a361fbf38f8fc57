"""Process-wide switches in one place: threads, cuDNN/TF32, log level by rank, seeds."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

log = logging.getLogger("train")


def setup_process(
    rank: int = 0,
    device: torch.device | None = None,
    threads: int | None = None,
    deterministic: bool = False,
) -> None:
    """Set the switches every training process needs before it builds anything.

    * log level: INFO on rank 0, WARNING elsewhere (one readable console under torchrun);
    * CPU threads: ``threads``, else under torchrun on CPU the cores split between local ranks
      (torch would give every rank all cores and they would thrash);
    * CUDA: cuDNN autotuning for the fixed input size, TF32 matmuls/convs (Ampere+), unless
      ``deterministic``.
    """
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.getLogger().setLevel(level)
    log.setLevel(level)
    if not logging.getLogger().handlers:  # no Hydra job logging (tests, non-zero ranks)
        logging.basicConfig(
            level=level, format=f"[%(asctime)s][rank {rank}][%(levelname)s] %(message)s"
        )
    if threads:
        torch.set_num_threads(int(threads))
    elif device is not None and device.type == "cpu" and "LOCAL_WORLD_SIZE" in os.environ:
        local = max(int(os.environ["LOCAL_WORLD_SIZE"]), 1)
        torch.set_num_threads(max((os.cpu_count() or 1) // local, 1))
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif device is not None and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - code that uses the global numpy RNG
    torch.manual_seed(seed)
