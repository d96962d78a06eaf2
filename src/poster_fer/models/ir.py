"""ArcFace IR backbone (the IR-50 family), as POSTER uses it: the first three stages only.

Submodule names follow the official code (``input_layer``, ``body`` or ``body1..3``, ``res_layer``,
``shortcut_layer``) so official and ArcFace ``ir50.pth`` state_dicts load key for key. The official model also
holds an ``output_layer`` (12.85M parameters) that never runs; it is not built here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class IRConfig:
    """Shape of an IR backbone.

    Args:
        units: bottleneck units per stage; IR-50 keeps (3, 4, 14) of its (3, 4, 14, 3).
        widths: output channels per stage.
        stem_width: channels of the 3x3 stem.
        split_stages: name stages ``body1..N`` and return every stage map (POSTER++), instead of one ``body``
            returning the last map (POSTER).
    """

    units: tuple[int, ...] = (3, 4, 14)
    widths: tuple[int, ...] = (64, 128, 256)
    stem_width: int = 64
    split_stages: bool = False


class BottleneckIR(nn.Module):
    """Pre-activation IR unit: BN, conv3x3, PReLU, conv3x3 (strided), BN, plus a shortcut."""

    def __init__(self, in_ch: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_ch == depth:
            # The official unit subsamples with a 1x1 max-pool, which has no parameters.
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_ch, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.Conv2d(in_ch, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def _stage(in_ch: int, depth: int, units: int) -> list[nn.Module]:
    return [BottleneckIR(in_ch if i == 0 else depth, depth, 2 if i == 0 else 1) for i in range(units)]


class IRBackbone(nn.Module):
    """IR stem and stages; each stage halves the resolution (112 -> 56 -> 28 -> 14)."""

    def __init__(self, cfg: IRConfig) -> None:
        super().__init__()
        if len(cfg.units) != len(cfg.widths):
            raise ValueError(f"IR config: {len(cfg.units)} stage unit counts but {len(cfg.widths)} widths")
        self.cfg = cfg
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, cfg.stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(cfg.stem_width),
            nn.PReLU(cfg.stem_width),
        )
        stages: list[list[nn.Module]] = []
        in_ch = cfg.stem_width
        for units, width in zip(cfg.units, cfg.widths, strict=True):
            stages.append(_stage(in_ch, width, units))
            in_ch = width
        if cfg.split_stages:
            for i, stage in enumerate(stages, start=1):
                self.add_module(f"body{i}", nn.Sequential(*stage))
        else:
            self.body = nn.Sequential(*[m for stage in stages for m in stage])

    @property
    def out_channels(self) -> int:
        return self.cfg.widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.input_layer(x)
        if not self.cfg.split_stages:
            return self.body(x)  # (B, widths[-1], H/2^S, W/2^S)
        maps = []
        for i in range(len(self.cfg.units)):
            x = getattr(self, f"body{i + 1}")(x)
            maps.append(x)
        return maps
