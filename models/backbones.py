"""Feature trunks cut out of torchvision classifiers, and their ImageNet weights.

A trunk is any torchvision classification model (``torchvision.models.get_model`` name) cut at
one graph node by torchvision's feature extraction (``create_feature_extractor``): ``layer4`` of a
ResNet, ``features.norm5`` of a DenseNet (as trt_pose: no final ReLU), ``features`` of a
MobileNetV3, ``conv5`` of a ShuffleNetV2 (all stride 32). An earlier node gives a shallower trunk
of stride 16 or 8 (``layer3`` / ``layer2`` of a ResNet): finer features and fewer upsampling
stages in the heads; ``trunk.stride`` is measured, not assumed. Everything after the node (pooling, classifier) is
dropped and the kept submodules keep torchvision's names, so ImageNet and trt_pose state dicts load
without renaming. A new trunk is a model YAML naming the model and its node (``backbone``,
``feature_node``). ``tiny`` is a small plain CNN for tests and CPU smoke runs, without weights.

Pretrained weights come from torchvision's weights API (``get_model_weights(name).DEFAULT``,
loaded by torchvision itself, old DenseNet key names included): the file is cached under
``$TORCH_HOME/hub`` and its SHA-256 prefix checked. ``weights_url`` replaces the file (a mirror, or
a local server in tests): a state dict in the model's current key names, whose file name follows
torch.hub's ``name-<sha256 prefix>.pth`` form for the hash check.
"""

from __future__ import annotations

import urllib.error
from collections.abc import Callable
from typing import TypeVar

import torch
import torchvision
from torch import fx, nn
from torchvision.models.feature_extraction import create_feature_extractor

OFFLINE_HINT = "model.pretrained=false"
STRIDES = (8, 16, 32)  # the trunk strides the heads accept
# The node of the torchvision families whose model YAMLs predate ``feature_node`` (checkpoints
# store the model config, so old ones must still build).
LEGACY_NODES = {"resnet": "layer4", "densenet": "features.norm5"}

T = TypeVar("T")


class TinyTrunk(nn.Module):
    """Five stride-2 conv-BN-ReLU stages (16..128 channels): a cheap stride-32 trunk for tests."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 96, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for w in widths:
            layers += [
                nn.Conv2d(cin, w, 3, 2, 1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ]
            cin = w
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H/32, W/32)


def build_trunk(
    name: str,
    feature_node: str | None = None,
    pretrained: bool = False,
    weights_url: str | None = None,
) -> nn.Module:
    """A trunk with ``out_channels`` and ``stride`` (8, 16 or 32); ImageNet weights loaded when
    ``pretrained``."""
    if name == "tiny":
        if pretrained:
            raise ValueError(f"backbone 'tiny' has no pretrained weights; set {OFFLINE_HINT}")
        trunk: nn.Module = TinyTrunk()
    else:
        trunk = _torchvision_trunk(name, _node(name, feature_node), pretrained, weights_url)
    trunk.out_channels, trunk.stride = _measure(trunk, name)
    return trunk


def _node(name: str, feature_node: str | None) -> str:
    if feature_node:
        return feature_node
    for family, node in LEGACY_NODES.items():
        if name.startswith(family):
            return node
    raise ValueError(
        f"backbone {name!r} needs model.feature_node: the torchvision graph node with the stride-32 "
        "(or 16, 8) features (see torchvision.models.feature_extraction.get_graph_node_names)"
    )


def _torchvision_trunk(
    name: str, node: str, pretrained: bool, weights_url: str | None
) -> fx.GraphModule:
    if name not in torchvision.models.list_models(torchvision.models):
        raise ValueError(f"unknown backbone {name!r}: not a torchvision classification model")
    if pretrained and weights_url is None:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        net = _fetching(
            name, weights.url, lambda: torchvision.models.get_model(name, weights=weights)
        )
    else:
        net = torchvision.models.get_model(name, weights=None)
    if pretrained and weights_url is not None:
        state = _fetching(name, weights_url, lambda: _download(weights_url))
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(
                f"ImageNet weights from {weights_url} do not fit backbone {name!r}: missing "
                f"{missing[:5]}, unexpected {unexpected[:5]} (a state dict of torchvision's "
                f"{name} with its current key names is expected)"
            )
    trunk = create_feature_extractor(net, return_nodes={node: "features"})
    # the extractor returns {"features": x} from its train and its eval graph; PoseNet's contract
    # is a tensor, so both graphs return x
    for graph in (trunk.train_graph, trunk.eval_graph):
        out = next(n for n in graph.nodes if n.op == "output")
        out.args = (out.args[0]["features"],)
    trunk.recompile()
    return trunk


def _download(url: str) -> dict[str, torch.Tensor]:
    return torch.hub.load_state_dict_from_url(
        url, map_location="cpu", progress=True, check_hash=True, weights_only=True
    )


def _fetching(name: str, url: str, fetch: Callable[[], T]) -> T:
    """``fetch()``, with download and hash failures turned into errors that name the fix."""
    try:
        return fetch()
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise RuntimeError(
            f"could not download the ImageNet weights of backbone {name!r} from {url} ({e}). "
            f"Offline? Train from scratch with the override `{OFFLINE_HINT}`, or put the file in "
            f"{torch.hub.get_dir()}/checkpoints/."
        ) from e
    except RuntimeError as e:
        if "hash" not in str(e):
            raise
        raise RuntimeError(
            f"ImageNet weights of backbone {name!r} from {url} failed the hash check ({e}); "
            f"delete the cached file and retry, or use `{OFFLINE_HINT}`"
        ) from e


def _measure(trunk: nn.Module, name: str) -> tuple[int, int]:
    """The trunk's channel count and stride, from one small forward; a stride the heads cannot
    take (not 8, 16 or 32) is an error."""
    size = 2 * max(STRIDES)
    was_training = trunk.training
    trunk.eval()
    with torch.no_grad():
        y = trunk(torch.zeros(1, 3, size, size))  # (1, C, size/s, size/s)
    trunk.train(was_training)
    h, w = y.shape[2:]
    if h != w or size % h or size // h not in STRIDES:
        raise ValueError(
            f"backbone {name!r}: its feature node gives {(h, w)} maps for a {size}x{size} input; "
            f"the heads need stride {' or '.join(map(str, STRIDES))}"
        )
    return int(y.shape[1]), size // h


def imagenet_weights_url(name: str) -> str:
    """torchvision's URL of the default ImageNet weights of ``name``."""
    if name == "tiny":
        raise ValueError(f"backbone 'tiny' has no pretrained weights; set {OFFLINE_HINT}")
    return torchvision.models.get_model_weights(name).DEFAULT.url
