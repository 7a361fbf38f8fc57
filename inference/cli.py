"""Command-line glue shared by the inference commands (eval, predict, visualize)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from datasets.files import claim_dir, resolve_path

TIME_FORMAT = "%Y-%m-%d_%H-%M-%S"  # as the run dirs in conf/*.yaml (${now:...})


def alias_model_argument(argv: list[str]) -> list[str]:
    """``model=PATH`` -> ``model_path=PATH``: Hydra reads ``model=`` as a choice in the
    ``conf/model`` config group, so the command line's short form is renamed before Hydra parses."""
    return [f"model_path={a[len('model=') :]}" if a.startswith("model=") else a for a in argv]


class UniqueRunDir(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/eval.yaml, predict.yaml, visualize.yaml): the
    run dir ``outputs/<cmd>/<time>`` becomes ``<time>_1``, ``<time>_2``, ... when another run
    already claimed it (``datasets.files.claim_dir``), before Hydra creates it and logs there:
    two commands started within the same second never share predictions.json or images/."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with read_write(config.hydra.run):
            config.hydra.run.dir = str(claim_dir(resolve_path(config.hydra.run.dir)))


def output_dir(cfg: Mapping[str, Any], command: str) -> Path:
    """``cfg.output``, else (outside Hydra) a claimed ``outputs/<command>/<time>[_N]``."""
    out = resolve_path(cfg.get("output"))
    return out or claim_dir(resolve_path(Path("outputs") / command / time.strftime(TIME_FORMAT)))


def default_output_to_run_dir(cfg: DictConfig) -> DictConfig:
    """Set ``cfg.output`` to Hydra's run directory when the user gave none."""
    if cfg.get("output") is None:
        OmegaConf.set_struct(cfg, False)
        cfg.output = HydraConfig.get().runtime.output_dir
    return cfg
