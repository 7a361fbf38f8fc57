"""Feature trunks (stride 32) and their ImageNet weights.

Every trunk maps (B, 3, H, W) normalised RGB to (B, C, H/32, W/32) features. The names are
torchvision's; ``tiny`` is a small plain CNN for tests and CPU smoke runs, without pretrained
weights.

Pretrained weights come from torchvision's weights API (``get_model_weights(name).DEFAULT``): the
URL and the file's SHA-256 prefix are torchvision's, the file is cached under ``$TORCH_HOME/hub``
and its hash is checked. ``weights_url`` replaces the URL (a mirror, or a local server in tests);
its file name must then follow torch.hub's ``name-<sha256 prefix>.pth`` form for the hash check.
"""

from __future__ import annotations

import re
import urllib.error
from collections.abc import Callable

import torch
import torchvision
from torch import nn

OFFLINE_HINT = "model.pretrained=false"


class ResNetTrunk(nn.Module):
    """A torchvision ResNet cut after layer4 (no pooling, no fc): stride 32.

    Submodule names are torchvision's, so ImageNet state dicts load directly (minus ``fc``).
    """

    def __init__(self, resnet: torchvision.models.ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = (
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            resnet.layer1,
            resnet.layer2,
            resnet.layer3,
            resnet.layer4,
        )
        self.out_channels = resnet.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x  # (B, C, H/32, W/32)


class DenseNetTrunk(nn.Module):
    """torchvision DenseNet ``features`` (ends with norm5, no ReLU, as trt_pose): stride 32."""

    def __init__(self, densenet: torchvision.models.DenseNet) -> None:
        super().__init__()
        self.features = densenet.features
        self.out_channels = densenet.classifier.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H/32, W/32)


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
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H/32, W/32)


def _resnet(name: str) -> Callable[[], nn.Module]:
    return lambda: ResNetTrunk(torchvision.models.get_model(name, weights=None))


def _densenet(name: str) -> Callable[[], nn.Module]:
    return lambda: DenseNetTrunk(torchvision.models.get_model(name, weights=None))


TRUNKS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": _resnet("resnet18"),
    "resnet34": _resnet("resnet34"),
    "resnet50": _resnet("resnet50"),
    "resnet101": _resnet("resnet101"),
    "densenet121": _densenet("densenet121"),
    "densenet169": _densenet("densenet169"),
    "tiny": TinyTrunk,
}

# Old torchvision DenseNet checkpoints name layers "denselayer1.norm.1"; modules are "norm1".
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def build_trunk(name: str, pretrained: bool = False, weights_url: str | None = None) -> nn.Module:
    """A stride-32 trunk with ``out_channels``; ImageNet weights loaded when ``pretrained``."""
    if name not in TRUNKS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(TRUNKS)}")
    trunk = TRUNKS[name]()
    if pretrained:
        load_imagenet_weights(trunk, name, weights_url)
    return trunk


def imagenet_weights_url(name: str) -> str:
    """torchvision's URL of the default ImageNet weights of ``name``."""
    if name == "tiny":
        raise ValueError(f"backbone 'tiny' has no pretrained weights; set {OFFLINE_HINT}")
    return torchvision.models.get_model_weights(name).DEFAULT.url


def load_imagenet_weights(trunk: nn.Module, name: str, weights_url: str | None = None) -> None:
    """Download (or take from the torch.hub cache) and load ImageNet weights into ``trunk``.

    Raises RuntimeError naming the URL and the ``model.pretrained=false`` override when the file
    cannot be fetched (offline machine) or fails its hash check.
    """
    url = weights_url or imagenet_weights_url(name)
    try:
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=True, check_hash=True, weights_only=True
        )
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
    if name.startswith("densenet"):
        state = {_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}
        state = {k.removeprefix("features."): v for k, v in state.items()}
        target = trunk.features
    else:
        target = trunk
    head_keys = ("fc.", "classifier.")
    state = {k: v for k, v in state.items() if not k.startswith(head_keys)}
    missing, unexpected = target.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"ImageNet weights from {url} do not fit backbone {name!r}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
