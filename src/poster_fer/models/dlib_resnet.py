"""dlib's face-recognition ResNet (29 conv layers, 128-d embedding, CC0), usable as POSTER's image stream.

The layout is dlib's ``dnn_face_recognition_ex`` network as stored in ``dlib_face_recognition_resnet_model_v1.dat``
(read by :func:`poster_fer.weights.face_backbones.load_dlib_resnet`):

* stem: conv 7x7/2 (32, no padding), affine, ReLU, max-pool 3x3/2;
* ``level4`` 3 residual blocks at 32; ``level3`` a down block to 64 and 3 blocks; ``level2`` down to 128 and 2
  blocks; ``level1`` down to 256 and 2 blocks; ``level0`` one more down block at 256; global average pool; a
  bias-free 256 -> 128 linear layer (the embedding);
* a block is conv3x3, affine, ReLU, conv3x3, affine, added to its input, then ReLU. A down block's first
  convolution has stride 2 and no padding, its skip is a 2x2/2 average pool, and the sum zero-pads the smaller
  operand at the bottom/right and in channels (dlib's ``add_prev``), because the two branches differ in size;
* "affine" is BatchNorm folded into a per-channel scale and shift; it stays a learnable scale and shift here;
* input: RGB ``(pixel - mean) / 256`` with means R 122.782, G 117.001, B 104.298 (dlib's
  ``input_rgb_image_sized<150>``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import check_tap

DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
DLIB_SCALE = 256.0
# (name, down block first?, plain blocks, width)
LEVELS: tuple[tuple[str, bool, int, int], ...] = (
    ("level4", False, 3, 32),
    ("level3", True, 3, 64),
    ("level2", True, 2, 128),
    ("level1", True, 2, 256),
    ("level0", True, 0, 256),
)
TAPS = ("stem", "level4", "level3", "level2", "level1", "level0")
TAP_CHANNELS = {"stem": 32, "level4": 32, "level3": 64, "level2": 128, "level1": 256, "level0": 256}


class Affine(nn.Module):
    """Per-channel ``x * scale + shift`` (dlib's affine layer: BatchNorm with its statistics folded in)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: zero-pad the smaller tensor at the bottom/right and in channels, then add."""
    shape = [max(p, q) for p, q in zip(a.shape[1:], b.shape[1:], strict=True)]

    def grow(t: torch.Tensor) -> torch.Tensor:
        c, h, w = t.shape[1:]
        if (c, h, w) == tuple(shape):
            return t
        return F.pad(t, (0, shape[2] - w, 0, shape[1] - h, 0, shape[0] - c))

    return grow(a) + grow(b)


class ResBlock(nn.Module):
    """conv3x3, affine, ReLU, conv3x3, affine; plus the skip (a 2x2/2 average pool in a down block); ReLU."""

    def __init__(self, in_c: int, out_c: int, down: bool) -> None:
        super().__init__()
        if not down and in_c != out_c:
            raise ValueError("a plain block keeps its width")
        self.down = down
        # dlib pads a stride-1 3x3 convolution by 1 and a strided one not at all.
        self.conv1 = nn.Conv2d(in_c, out_c, 3, 2 if down else 1, 0 if down else 1, bias=True)
        self.affine1 = Affine(out_c)
        self.conv2 = nn.Conv2d(out_c, out_c, 3, 1, 1, bias=True)
        self.affine2 = Affine(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_prev(y, skip))


class DlibResNet(nn.Module):
    """dlib's ResNet up to ``last`` (a name in :data:`TAPS`), or the whole network with the 128-d embedding.

    ``forward(x)`` takes dlib's normalisation (see the module docstring) and returns the map at ``last``, or
    the embedding (not normalised, as dlib's ``compute_face_descriptor``) with ``with_head=True``.
    """

    def __init__(self, last: str = "level0", with_head: bool = False) -> None:
        super().__init__()
        check_tap("dlib ResNet", last, TAPS, with_head)
        self.last = last
        self.stem_conv = nn.Conv2d(3, 32, 7, 2, 0, bias=True)
        self.stem_affine = Affine(32)
        self.levels = nn.ModuleDict()
        in_c = 32
        for name, down, plain, width in LEVELS:
            if TAPS.index(name) > TAPS.index(last):
                break
            blocks = ([ResBlock(in_c, width, True)] if down else []) + [ResBlock(width, width, False)
                                                                      for _ in range(plain)]
            self.levels[name] = nn.Sequential(*blocks)
            in_c = width
        self.fc = nn.Linear(256, 128, bias=False) if with_head else None
        self.out_channels = TAP_CHANNELS[last]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem_affine(self.stem_conv(x))), 3, 2)
        for level in self.levels.values():
            x = level(x)
        if self.fc is None:
            return x
        return self.fc(x.mean((2, 3)))
