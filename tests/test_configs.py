"""Every config composes: each primary config in conf/, every option of every config group onto
the app that uses it, every experiment, and every `_target_` (models, optimizers, schedulers)
instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datasets.topology import Topology, topology_from_config
from models.build import build_model

CONF = Path(__file__).resolve().parent.parent / "conf"
PRIMARY = sorted(p.stem for p in CONF.glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())
# group -> the app whose defaults list holds it (every group is used by train but download's)
GROUP_APP = {"topology": "train", "decoder": "eval"}
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


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
    assert c["optimizer"]["_target_"] == "torch.optim.Adam"
    assert c["optimizer"]["lr"] == pytest.approx(1e-3)
    assert c["scheduler"] == {
        "_target_": "torch.optim.lr_scheduler.MultiStepLR",
        "_partial_": True,
        "milestones": [75, 150],
        "gamma": 0.1,
    }
    assert c["model"]["stride"] == 4  # 224 -> 56x56 maps


def test_smoke_is_offline_and_small():
    c = OmegaConf.to_container(_compose("train", ["experiment=smoke"]), resolve=True)
    assert c["model"]["pretrained"] is False and c["data"]["name"] == "synthetic"
    assert max(c["data"]["input_size"]) <= 160 and c["epochs"] <= 5


def test_synthetic_is_offline_with_a_layer3_trunk_whose_maps_fit_the_targets():
    c = OmegaConf.to_container(_compose("train", ["experiment=synthetic"]), resolve=True)
    assert c["model"]["pretrained"] is False and c["data"]["name"] == "synthetic"
    topo = topology_from_config(c["topology"])
    m = build_model(c["model"], topo).eval()
    assert m.backbone.stride == 16 and m.stride == c["targets"]["stride"] == 4
    h, w = c["data"]["input_size"]
    with torch.no_grad():
        heat, paf = m(torch.rand(1, 3, h, w))
    assert heat.shape == (1, topo.num_parts, h // 4, w // 4)
    assert paf.shape == (1, topo.num_paf_channels, h // 4, w // 4)


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


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_group_option_composes(group, option):
    """Each file of each config group composes onto its app and every interpolation resolves."""
    app = GROUP_APP.get(group, "train")
    override = f"experiment={option}" if group == "experiment" else f"{group}={option}"
    plain = OmegaConf.to_container(_compose(app, [override]), resolve=True)
    if group == "experiment":
        assert plain["name"] == option
    else:
        assert isinstance(plain[group], dict) and plain[group]


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml")))
def test_every_optimizer_instantiates(option):
    c = OmegaConf.to_container(_compose("train", [f"optimizer={option}"]), resolve=True)
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = instantiate(c["optimizer"])(params)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == pytest.approx(c["optimizer"]["lr"])


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "scheduler").glob("*.yaml")))
def test_every_scheduler_instantiates_and_steps(option):
    c = OmegaConf.to_container(
        _compose("train", [f"scheduler={option}", "epochs=200"]), resolve=True
    )
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = instantiate(c["scheduler"])(opt)
    lrs = []
    for _ in range(200):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    got = (lrs[0], lrs[100], lrs[199])
    if option == "cosine":  # over the run's epochs (T_max: ${epochs}): half-way at 100
        assert got[0] == pytest.approx(1.0) and got[1] == pytest.approx(0.5, abs=0.01)
        assert got[2] < 0.001
    else:  # multistep: x0.1 at epochs 75 and 150
        assert got == pytest.approx({"constant": (1, 1, 1), "multistep": (1, 0.1, 0.01)}[option])


def test_targets_group_follows_the_model_stride():
    """One targets file for every app: its stride is the model's in train, 4 where no model."""
    c = OmegaConf.to_container(_compose("train", ["model.stride=2"]), resolve=True)
    assert c["targets"]["stride"] == 2
    for app in ("eval", "visualize"):
        t = OmegaConf.to_container(_compose(app), resolve=True)["targets"]
        assert t == {
            "stride": 4,
            "sigma": 1.0,
            "paf_width": 1.0,
            "truncate": 4.0,
            "min_visibility": 1,
        }


def test_one_name_for_decoder_overrides():
    """Every inference command takes its decoder overrides as ``decoder_overrides``."""
    for app in ("eval", "predict", "serve", "visualize"):
        # null, not {}: Hydra replaces it with `decoder_overrides={NAME:VALUE}` (an empty {}
        # would be a struct node that refuses new keys)
        assert _compose(app).decoder_overrides is None, app
