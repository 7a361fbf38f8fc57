"""trt_pose's ``*_baseline_att`` pose network: a stride-32 trunk and two attention heads.

Each head upsamples the trunk features with ``n`` x [ConvTranspose2d(k4, s2, p1) + BN + ReLU]
(C -> 256 -> 256 -> 256 for n = 3), gates them with an attention map (3x3 conv 256 -> 256;
sigmoid for the heatmap head, tanh for the PAF head, multiplied with the features) and projects with
a 1x1 conv to K heatmap / 2E PAF channels. Outputs are linear (no activation): the loss is MSE
against targets in [0, 1] and [-1, 1].

Output stride = 32 / 2**n: stride 4 (n = 3) is the trt_pose default (224 -> 56x56 maps); stride 2
(n = 4) suits small inputs. A trunk cut earlier (stride 16 or 8, e.g. ``feature_node: layer3``)
needs fewer stages: n = log2(trunk stride / output stride).

The head's submodule names are trt_pose's (``cmap_up``, ``paf_up``, ``cmap_att``, ``paf_att``,
``cmap_conv``, ``paf_conv``) so ``convert_trt_pose_state_dict`` maps a trt_pose checkpoint onto
this model. Unlike trt_pose, mean/std normalisation happens inside ``forward`` (buffers from the
config) so callers feed RGB in [0, 1] and the exported graph carries the normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from models.backbones import build_trunk
from models.contract import IMAGENET_MEAN, IMAGENET_STD


def upsample_cbr(cin: int, cout: int, count: int, num_flat: int = 0) -> nn.Sequential:
    """``count`` x [ConvTranspose2d(k4, s2, p1) + BN + ReLU (+ ``num_flat`` 3x3 conv-BN-ReLU)]."""
    layers: list[nn.Module] = []
    for i in range(count):
        layers += [
            nn.ConvTranspose2d(cin if i == 0 else cout, cout, kernel_size=4, stride=2, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        ]
        for _ in range(num_flat):
            layers += [nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers)


class CmapPafHeadAttention(nn.Module):
    """Two upsampling heads with attention gates: heatmap (sigmoid gate) and PAF (tanh gate)."""

    def __init__(
        self,
        in_channels: int,
        num_parts: int,
        num_paf_channels: int,
        upsample_channels: int = 256,
        num_upsample: int = 3,
        num_flat: int = 0,
    ) -> None:
        super().__init__()
        c = upsample_channels
        self.cmap_up = upsample_cbr(in_channels, c, num_upsample, num_flat)
        self.paf_up = upsample_cbr(in_channels, c, num_upsample, num_flat)
        self.cmap_att = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1)
        self.paf_att = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1)
        self.cmap_conv = nn.Conv2d(c, num_parts, kernel_size=1)
        self.paf_conv = nn.Conv2d(c, num_paf_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xc = self.cmap_up(x)  # (B, 256, h, w)
        xc = xc * torch.sigmoid(self.cmap_att(xc))
        xp = self.paf_up(x)
        xp = xp * torch.tanh(self.paf_att(xp))
        return self.cmap_conv(xc), self.paf_conv(xp)


class PoseNet(nn.Module):
    """Normalise -> trunk -> attention heads. ``forward`` returns ``(heatmap, paf)`` only."""

    def __init__(
        self,
        num_parts: int,
        num_paf_channels: int,
        backbone: str = "resnet18",
        feature_node: str | None = None,
        stride: int = 4,
        pretrained: bool = False,
        weights_url: str | None = None,
        upsample_channels: int = 256,
        num_flat: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"model mean/std must be 3 values (std > 0); got {mean}, {std}")
        self.name = name or f"{backbone}_baseline_att"
        self.num_parts = int(num_parts)
        self.num_paf_channels = int(num_paf_channels)
        self.backbone = build_trunk(backbone, feature_node, pretrained, weights_url)
        trunk_stride = self.backbone.stride
        n = math.log2(trunk_stride / stride) if stride > 0 else -1
        if stride <= 0 or n != int(n) or not 1 <= n <= 5:
            raise ValueError(
                f"model stride must be {trunk_stride} / 2**n for n >= 1 (the trunk "
                f"{backbone}:{feature_node} has stride {trunk_stride}); got {stride}"
            )
        self.stride = int(stride)
        self.head = CmapPafHeadAttention(
            self.backbone.out_channels,
            num_parts,
            num_paf_channels,
            upsample_channels=upsample_channels,
            num_upsample=int(n),
            num_flat=num_flat,
        )
        # Not persistent: they come from the config stored next to the weights, so state dicts
        # hold learned parameters only (and trt_pose weights convert without them).
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) RGB in [0, 1] -> heatmap (B, K, H/s, W/s), paf (B, 2E, H/s, W/s)."""
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.head(self.backbone(x))


def convert_trt_pose_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a trt_pose ``resnet*_baseline_att`` / ``densenet*_baseline_att`` state dict onto PoseNet.

    trt_pose's model is ``Sequential(Backbone, CmapPafHeadAttention)``: keys ``0.resnet.*`` /
    ``0.densenet.features.*`` and ``1.*``. The classifier (``fc``/``classifier``) is dropped.
    Note that trt_pose normalises outside the network; PoseNet does it inside, so feed [0, 1].
    The output channels need no reordering: trt_pose's 18 parts and 21 links are coco18's, and its
    PAF layout (link k: vertical component in channel 2k, horizontal in 2k+1) is coco18's
    ``edges_paf`` ``[[1, 0], [3, 2], ...]``, as in the Isaac trt_pose app.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.startswith("0.resnet."):
            rest = k.removeprefix("0.resnet.")
            if not rest.startswith("fc."):
                out["backbone." + rest] = v
        elif k.startswith("0.densenet."):
            rest = k.removeprefix("0.densenet.")
            if not rest.startswith("classifier."):
                out["backbone." + rest] = v
        elif k.startswith("1."):
            out["head." + k.removeprefix("1.")] = v
        else:
            raise ValueError(f"unexpected key {k!r} in a trt_pose state dict")
    return out
