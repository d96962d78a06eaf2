"""MobileFaceNet, the 68-point landmark network whose feature maps form POSTER's landmark stream.

Layer names follow the official ``mobilefacenet_model_best.pth.tar`` keys. The regression head
(``output_layer``, 136 outputs) is built only on request: POSTER discards its output.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    """conv (no bias) + BN + PReLU."""

    def __init__(self, in_c: int, out_c: int, k: int = 1, s: int = 1, p: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, k, s, p, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)
        self.prelu = nn.PReLU(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class LinearBlock(nn.Module):
    """conv (no bias) + BN, no activation."""

    def __init__(self, in_c: int, out_c: int, k: int = 1, s: int = 1, p: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, k, s, p, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``groups`` channels, depthwise 3x3, 1x1 project."""

    def __init__(self, in_c: int, out_c: int, groups: int, stride: int = 2, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.conv = ConvBlock(in_c, groups)
        self.conv_dw = ConvBlock(groups, groups, 3, stride, 1, groups=groups)
        self.project = LinearBlock(groups, out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(nn.Module):
    """A stack of stride-1 residual DepthWise units (``model.N`` in the checkpoints)."""

    def __init__(self, c: int, num_block: int, groups: int) -> None:
        super().__init__()
        self.model = nn.Sequential(*[DepthWise(c, c, groups, stride=1, residual=True) for _ in range(num_block)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GDC(nn.Module):
    """Global depthwise conv head regressing 68 (x, y) landmarks."""

    def __init__(self, num_outputs: int = 136) -> None:
        super().__init__()
        self.conv_6_dw = LinearBlock(512, 512, 7, 1, 0, groups=512)
        self.linear = nn.Linear(512, num_outputs, bias=False)
        self.bn = nn.BatchNorm1d(num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(self.conv_6_dw(x).flatten(1)))


class MobileFaceNet(nn.Module):
    """Landmark network. ``forward`` returns the maps named in ``return_maps`` (default: ``conv_6_sep``).

    Args:
        with_head: build the 136-d regression head (``output_layer``); POSTER does not use it.
        return_maps: which intermediate maps to return, in order (POSTER: ``conv_6_sep``; POSTER++:
            ``conv_3``, ``conv_4``, ``conv_6_sep``).
    """

    def __init__(self, with_head: bool = False, return_maps: tuple[str, ...] = ("conv_6_sep",)) -> None:
        super().__init__()
        self.return_maps = tuple(return_maps)
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.conv2_dw = ConvBlock(64, 64, 3, 1, 1, groups=64)
        self.conv_23 = DepthWise(64, 64, groups=128)
        self.conv_3 = Residual(64, 4, groups=128)
        self.conv_34 = DepthWise(64, 128, groups=256)
        self.conv_4 = Residual(128, 6, groups=256)
        self.conv_45 = DepthWise(128, 128, groups=512)
        self.conv_5 = Residual(128, 2, groups=256)
        self.conv_6_sep = ConvBlock(128, 512)
        self.output_layer = GDC() if with_head else None

    _ORDER = ("conv1", "conv2_dw", "conv_23", "conv_3", "conv_34", "conv_4", "conv_45", "conv_5", "conv_6_sep")

    def forward_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's map; (B,3,112,112) -> conv_3 (B,64,28,28), conv_4 (B,128,14,14), conv_6_sep (B,512,7,7)."""
        maps = {}
        for name in self._ORDER:
            x = getattr(self, name)(x)
            maps[name] = x
        return maps

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.forward_maps(x)
        return [maps[name] for name in self.return_maps]

    def landmarks(self, x: torch.Tensor) -> torch.Tensor:
        """The 136-d landmark regression (68 (x, y) pairs in [0, 1] of the crop); needs ``with_head``."""
        if self.output_layer is None:
            raise RuntimeError("this MobileFaceNet was built without its landmark head (with_head=False)")
        return self.output_layer(self.forward_maps(x)["conv_6_sep"])
