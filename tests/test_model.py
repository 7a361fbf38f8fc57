"""Model: trt_pose architecture numbers, output shapes, normalisation inside, ImageNet weights."""

from __future__ import annotations

import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from datasets.errors import UserError
from datasets.topology import Topology
from models.backbones import imagenet_weights_url
from models.build import build_from_checkpoint, build_model, count_macs, count_parameters
from models.posenet import convert_trt_pose_state_dict

CONF = Path(__file__).resolve().parent.parent / "conf" / "model"
TOPO = Topology.named("coco18")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def model_cfg(name: str, **over) -> dict:
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    cfg.update(pretrained=False)
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(model_cfg("resnet18_baseline_att"), TOPO).eval()


def test_resnet18_baseline_att_size_matches_trt_pose(resnet18):
    # trt_pose resnet18_baseline_att: ~20.8 M parameters (fc removed), ~7.8 GMAC at 224x224
    params = count_parameters(resnet18)
    assert abs(params - 20.8e6) / 20.8e6 < 0.01, params
    macs = count_macs(resnet18, (224, 224))
    assert abs(macs - 7.8e9) / 7.8e9 < 0.03, macs
    assert resnet18.stride == 4


def test_output_shapes_stride4_and_stride2(resnet18):
    with torch.no_grad():
        heat, paf = resnet18(torch.rand(2, 3, 224, 224))
    assert heat.shape == (2, 18, 56, 56) and paf.shape == (2, 42, 56, 56)
    m2 = build_model(model_cfg("tiny", stride=2), TOPO).eval()
    assert m2.stride == 2
    with torch.no_grad():
        heat, paf = m2(torch.rand(1, 3, 64, 96))
    assert heat.shape == (1, 18, 32, 48) and paf.shape == (1, 42, 32, 48)


def test_outputs_are_linear_and_normalisation_is_inside(resnet18):
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        heat, paf = resnet18(x)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        ref = resnet18.head(resnet18.backbone((x - mean) / std))
    torch.testing.assert_close(heat, ref[0])
    torch.testing.assert_close(paf, ref[1])
    # linear outputs: a random-init head produces negative heatmap values too (no sigmoid/ReLU)
    assert heat.min() < 0 < heat.max()
    # mean/std are config, not weights: the state dict holds learned tensors only
    assert "mean" not in resnet18.state_dict() and "std" not in resnet18.state_dict()


def test_bad_stride_is_a_clear_error():
    with pytest.raises(ValueError, match="stride must be 32 / 2"):
        build_model(model_cfg("tiny", stride=3), TOPO)


def test_a_topology_without_edges_is_refused_with_the_fix():
    # a single-keypoint category passes topology=auto (one piece) and decodes, but a network
    # needs at least one PAF: refused in one line instead of torch's conv error at the first step
    for topo in (
        Topology(name="dot", labels=("a",), edges=()),
        Topology(name="two", labels=("a", "b"), edges=()),
    ):
        with pytest.raises(UserError, match=f"topology '{topo.name}' has no edges .* skeleton"):
            build_model(model_cfg("tiny"), topo)


@pytest.mark.parametrize("name", ["resnet50_baseline_att", "densenet121_baseline_att"])
def test_variant_trunks_build_and_run(name):
    m = build_model(model_cfg(name), TOPO).eval()
    with torch.no_grad():
        heat, paf = m(torch.rand(1, 3, 64, 64))
    assert heat.shape == (1, 18, 16, 16) and paf.shape == (1, 42, 16, 16)


def test_trt_pose_state_dict_converts(resnet18):
    # build a state dict keyed the way trt_pose's Sequential(ResNetBackbone, head) names it
    tv = torchvision.models.resnet18()
    trt = {f"0.resnet.{k}": v for k, v in tv.state_dict().items()}
    trt.update({f"1.{k}": v for k, v in resnet18.head.state_dict().items()})
    converted = convert_trt_pose_state_dict(trt)
    m = build_model(model_cfg("resnet18_baseline_att"), TOPO)
    m.load_state_dict(converted)  # strict: every key maps
    torch.testing.assert_close(m.backbone.conv1.weight, tv.conv1.weight)


def test_build_from_checkpoint_roundtrip(tmp_path):
    from train.checkpoint import save_checkpoint

    m = build_model(model_cfg("tiny"), TOPO).eval()
    cfg = {"model": model_cfg("tiny", pretrained=True), "topology": TOPO.to_dict()}
    path = save_checkpoint(
        tmp_path / "c.pth", {"epoch": 1, "step": 3, "model": m.state_dict(), "config": cfg}
    )
    # pretrained=true in the stored config must not trigger a download (tiny has no weights and
    # would raise): build_from_checkpoint forces it off
    m2, config = build_from_checkpoint(path)
    assert not m2.training and config["model"]["pretrained"] is True
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(m(x), m2(x), strict=True):
            assert torch.equal(a, b)


# ------------------------------------------------------------------ ImageNet weights download
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _fake_imagenet_resnet18(folder: Path, bad_hash: bool = False) -> tuple[str, dict]:
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    tmp = folder / "w.pth"
    torch.save(state, tmp)
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    name = f"resnet18-{'00000000' if bad_hash else sha}.pth"
    tmp.rename(folder / name)
    return name, state


def test_pretrained_downloads_verifies_and_loads(http_dir, tmp_path, monkeypatch):
    www, base = http_dir
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    name, state = _fake_imagenet_resnet18(www)
    m = build_model(
        model_cfg("resnet18_baseline_att", pretrained=True, weights_url=f"{base}/{name}"), TOPO
    )
    torch.testing.assert_close(
        m.backbone.get_submodule("layer4.1.conv2").weight, state["layer4.1.conv2.weight"]
    )
    assert (tmp_path / "torch_home" / "hub" / "checkpoints" / name).is_file()


def test_pretrained_hash_mismatch_is_a_clear_error(http_dir, tmp_path, monkeypatch):
    www, base = http_dir
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    name, _ = _fake_imagenet_resnet18(www, bad_hash=True)
    with pytest.raises(RuntimeError, match="hash check.*model.pretrained=false"):
        build_model(
            model_cfg("resnet18_baseline_att", pretrained=True, weights_url=f"{base}/{name}"), TOPO
        )


def test_pretrained_offline_names_the_override(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/resnet18-f37072fd.pth"
    with pytest.raises(RuntimeError, match=r"Offline\?.*model.pretrained=false"):
        build_model(model_cfg("resnet18_baseline_att", pretrained=True, weights_url=url), TOPO)


def test_default_weights_are_torchvisions_and_come_from_the_hub_cache(tmp_path, monkeypatch):
    # with weights_url null the file is torchvision's; a file already in the torch.hub cache is
    # used without any network access
    url = imagenet_weights_url("resnet18")
    assert url == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(2)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, cache / url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    m = build_model(model_cfg("resnet18_baseline_att", pretrained=True), TOPO)
    torch.testing.assert_close(m.backbone.conv1.weight, state["conv1.weight"])


# ------------------------------------------------------------------ trunks from torchvision graphs
def test_a_new_trunk_is_one_yaml():
    # conf/model/mobilenet_v3_large_att.yaml names a torchvision model and its stride-32 node
    m = build_model(model_cfg("mobilenet_v3_large_att"), TOPO).eval()
    assert m.backbone.out_channels == 960
    with torch.no_grad():
        heat, paf = m(torch.rand(1, 3, 96, 128))
    assert heat.shape == (1, 18, 24, 32) and paf.shape == (1, 42, 24, 32)
    assert not any(k.startswith("backbone.classifier") for k in m.state_dict())


def test_trunk_cut_at_stride_16_gets_two_upsampling_stages():
    # resnet18 cut after layer3 (256 channels at stride 16): maps at stride 4 from 2 stages
    m = build_model(model_cfg("resnet18_baseline_att", feature_node="layer3"), TOPO).eval()
    assert (m.backbone.out_channels, m.backbone.stride, m.stride) == (256, 16, 4)
    assert sum(isinstance(x, torch.nn.ConvTranspose2d) for x in m.head.cmap_up) == 2
    assert not any(k.startswith("backbone.layer4") for k in m.state_dict())
    with torch.no_grad():
        heat, paf = m(torch.rand(1, 3, 64, 96))
    assert heat.shape == (1, 18, 16, 24) and paf.shape == (1, 42, 16, 24)


def test_trunk_node_of_a_stride_the_heads_cannot_take_is_a_clear_error():
    with pytest.raises(ValueError, match="heads need stride 8 or 16 or 32"):
        build_model(model_cfg("resnet18_baseline_att", feature_node="layer1"), TOPO)
    with pytest.raises(ValueError, match="model stride must be 16 / 2"):
        build_model(model_cfg("resnet18_baseline_att", feature_node="layer3", stride=16), TOPO)
    with pytest.raises(ValueError, match="needs model.feature_node"):
        build_model(model_cfg("tiny", backbone="mobilenet_v3_small"), TOPO)
    with pytest.raises(ValueError, match="not a torchvision classification model"):
        build_model(model_cfg("resnet18_baseline_att", backbone="resnet7"), TOPO)


def test_trt_pose_densenet_state_dict_converts():
    tv = torchvision.models.densenet121()
    m = build_model(model_cfg("densenet121_baseline_att"), TOPO)
    trt = {f"0.densenet.{k}": v for k, v in tv.state_dict().items()}
    trt.update({f"1.{k}": v for k, v in m.head.state_dict().items()})
    m.load_state_dict(convert_trt_pose_state_dict(trt))  # strict: every key maps
    w = m.backbone.get_submodule("features.denseblock4.denselayer16.conv2").weight
    torch.testing.assert_close(w, tv.features.denseblock4.denselayer16.conv2.weight)


def test_densenet_imagenet_file_with_old_key_names_loads(tmp_path, monkeypatch):
    # torchvision's densenet files name layers "denselayer1.norm.1"; torchvision's own loader
    # (used through the weights API) renames them, so the trunk needs no key surgery of its own
    url = imagenet_weights_url("densenet121")
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(3)
    state = torchvision.models.densenet121().state_dict()
    # as torchvision's file: old names, and no num_batches_tracked (it predates them)
    old = {
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    assert old != state
    torch.save(old, cache / url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    m = build_model(model_cfg("densenet121_baseline_att", pretrained=True), TOPO)
    got = m.backbone.state_dict()
    for key in ("features.denseblock2.denselayer3.norm1.weight", "features.norm5.running_mean"):
        torch.testing.assert_close(got[key], state[key])
