"""Every config composes: each primary config in conf/, every experiment, every model `_target_`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from datasets.topology import Topology, topology_from_config
from models.build import build_model

CONF = Path(__file__).resolve().parent.parent / "conf"
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _compose(name: str, overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides or [])


def test_the_primary_configs_exist():
    # the apps of DESIGN.md each have a primary config; this list only grows
    for name in ("train", "export", "predict", "download", "preprocess", "tensorrt"):
        assert name in PRIMARY, f"conf/{name}.yaml missing"


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_config_composes_and_resolves(name):
    cfg = _compose(name)
    plain = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert isinstance(plain, dict) and plain
    # apps that carry a topology / model+targets node must carry consistent ones
    if isinstance(plain.get("topology"), dict):
        topology_from_config(plain["topology"])
    model, targets = plain.get("model"), plain.get("targets")
    if isinstance(model, dict) and isinstance(targets, dict) and "stride" in model:
        assert targets["stride"] == model["stride"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_onto_train(experiment):
    cfg = _compose("train", [f"experiment={experiment}"])
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert plain["name"] == experiment  # the experiment's values win over the base (_self_ first)
    assert plain["targets"]["stride"] == plain["model"]["stride"]
    h, w = plain["data"]["input_size"]
    assert h % plain["model"]["stride"] == 0 and w % plain["model"]["stride"] == 0
    assert Path(plain["out_dir"]).name == experiment
    model = build_model(
        dict(plain["model"], pretrained=False), topology_from_config(plain["topology"])
    )
    assert model.stride == plain["model"]["stride"]


def test_resnet18_224_is_the_trt_pose_recipe():
    c = OmegaConf.to_container(_compose("train", ["experiment=resnet18_224"]), resolve=True)
    assert c["model"]["backbone"] == "resnet18" and c["model"]["pretrained"] is True
    assert c["data"]["name"] == "coco" and c["data"]["input_size"] == [224, 224]
    assert c["data"]["batch_size"] == 64 and c["epochs"] == 250
    assert c["optimizer"]["name"] == "adam" and c["optimizer"]["lr"] == pytest.approx(1e-3)
    assert c["scheduler"] == {"name": "multistep", "milestones": [75, 150], "gamma": 0.1}
    assert c["model"]["stride"] == 4  # 224 -> 56x56 maps


def test_smoke_is_offline_and_small():
    c = OmegaConf.to_container(_compose("train", ["experiment=smoke"]), resolve=True)
    assert c["model"]["pretrained"] is False and c["data"]["name"] == "synthetic"
    assert max(c["data"]["input_size"]) <= 160 and c["epochs"] <= 5


def test_train_defaults():
    c = _compose("train")
    assert c.model.name == "resnet18_baseline_att" and c.data.name == "synthetic"
    assert c.topology.name == "coco18" and c.resume == "auto"


@pytest.mark.parametrize("model", MODELS)
def test_every_model_target_instantiates(model):
    cfg = OmegaConf.to_container(_compose("train", [f"model={model}"]).model, resolve=True)
    assert "_target_" in cfg
    topo = Topology.named("coco18")
    m = build_model(dict(cfg, pretrained=False), topo).eval()
    with torch.no_grad():
        heat, paf = m(torch.rand(1, 3, 64, 64))
    s = cfg["stride"]
    assert heat.shape == (1, topo.num_parts, 64 // s, 64 // s)
    assert paf.shape == (1, topo.num_paf_channels, 64 // s, 64 // s)
