"""python -m train [experiment=resnet18_224] [key=value ...]

Train a pose network (config: conf/train.yaml). Distributed data parallel on every GPU of a node:

    torchrun --nproc_per_node=8 -m train experiment=resnet18_224

Multi-node: the same command on each node with ``--nnodes=N --rdzv_backend=c10d
--rdzv_endpoint=HOST:PORT --rdzv_id=RUN`` (see scripts/train_dgx.sh). All ranks share
``out_dir`` (default runs/<name>); rank 0 alone writes checkpoints and logs there.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from datasets.errors import user_errors
from train.loop import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@user_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


def _quiet_hydra_on_other_ranks() -> None:
    """Under torchrun only rank 0 keeps Hydra's log file and .hydra/ config copy."""
    if int(os.environ.get("RANK", "0")) > 0:
        sys.argv += [
            "hydra.output_subdir=null",
            "hydra/job_logging=none",
            "hydra/hydra_logging=none",
        ]


if __name__ == "__main__":
    _quiet_hydra_on_other_ranks()
    main()
