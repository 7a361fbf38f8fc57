"""Command-line glue shared by the inference commands (eval, predict, visualize)."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf


def alias_model_argument(argv: list[str]) -> list[str]:
    """``model=PATH`` -> ``model_path=PATH``: Hydra reads ``model=`` as a choice in the
    ``conf/model`` config group, so the command line's short form is renamed before Hydra parses."""
    return [f"model_path={a[len('model=') :]}" if a.startswith("model=") else a for a in argv]


def default_output_to_run_dir(cfg: DictConfig) -> DictConfig:
    """Set ``cfg.output`` to Hydra's run directory when the user gave none."""
    if cfg.get("output") is None:
        OmegaConf.set_struct(cfg, False)
        cfg.output = HydraConfig.get().runtime.output_dir
    return cfg
