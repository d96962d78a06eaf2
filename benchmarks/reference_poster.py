"""A reference POSTER (v1) that mirrors the official code's structure, for benchmarking only.

Written from ``shared/docs/official-poster.md`` (not from poster_fer and not copied from the official
repository) so that the benchmarks compare poster-fer against what the authors' code *executes*:

* eager fp32, explicit ``softmax(q k^T * scale) v`` attention;
* ``F.interpolate(x, size=112)`` (nearest) run once per backbone, as the official forward does;
* MobileFaceNet's 136-d landmark head computed and thrown away;
* the official module layout, dead modules included (IR ``output_layer`` and ``pyramid_fuse.cls_token`` exist
  and hold weights but never run), so an official state_dict loads with ``strict=True``.

It must reproduce ``shared/parity/poster_v1_rafdb.expected.safetensors`` (tested in tests/test_bench.py):
a speed-up measured against it is a speed-up against the official computation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ReferencePoster", "reference_poster"]


# --- IR-50 (ArcFace), official layout: input_layer, body.N.{res_layer, shortcut_layer}, output_layer -------------

class _IRUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if cin == cout:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class _IR50(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        cin = 64
        for n, cout in ((3, 64), (4, 128), (14, 256)):
            for i in range(n):
                units.append(_IRUnit(cin, cout, 2 if i == 0 else 1))
                cin = cout
        self.body = nn.Sequential(*units)
        # Present in every official checkpoint, never executed by POSTER (12.85M parameters).
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=112)
        return self.body(self.input_layer(x))


# --- MobileFaceNet, official layout ------------------------------------------------------------------------------

class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1, p: int = 0, groups: int = 1,
                 act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if act:
            self.prelu = nn.PReLU(cout)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.prelu(x) if self.act else x


class _DepthWise(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.conv = _ConvBlock(cin, groups)
        self.conv_dw = _ConvBlock(groups, groups, 3, stride, 1, groups=groups)
        self.project = _ConvBlock(groups, cout, act=False)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        return x + y if self.residual else y


class _Residual(nn.Module):
    def __init__(self, c: int, blocks: int, groups: int) -> None:
        super().__init__()
        self.model = nn.Sequential(*[_DepthWise(c, c, groups, 1, True) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _GDC(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_6_dw = _ConvBlock(512, 512, 7, 1, 0, groups=512, act=False)
        self.linear = nn.Linear(512, 136, bias=False)
        self.bn = nn.BatchNorm1d(136)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(torch.flatten(self.conv_6_dw(x), 1)))


class _MobileFaceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _ConvBlock(3, 64, 3, 2, 1)
        self.conv2_dw = _ConvBlock(64, 64, 3, 1, 1, groups=64)
        self.conv_23 = _DepthWise(64, 64, 128, 2, False)
        self.conv_3 = _Residual(64, 4, 128)
        self.conv_34 = _DepthWise(64, 128, 256, 2, False)
        self.conv_4 = _Residual(128, 6, 256)
        self.conv_45 = _DepthWise(128, 128, 512, 2, False)
        self.conv_5 = _Residual(128, 2, 256)
        self.conv_6_sep = _ConvBlock(128, 512)
        self.output_layer = _GDC()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_3(self.conv_23(x))
        x = self.conv_4(self.conv_34(x))
        x = self.conv_5(self.conv_45(x))
        feat = self.conv_6_sep(x)
        return self.output_layer(feat), feat  # (136 landmark coordinates, (B,512,7,7) map)


# --- Pyramid cross-fusion transformer ------------------------------------------------------------------------------

class _Mlp(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _KVAttention(nn.Module):
    """Keys/values from one stream, the other stream's normed tokens as queries (no query projection)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (d // heads) ** -0.5
        self.kv = nn.Linear(d, 2 * d, bias=True)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.heads
        kv = self.kv(x).reshape(b, n, 2, h, c // h).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        q = q.reshape(b, q.shape[1], h, c // h).permute(0, 2, 1, 3)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, q.shape[2], c)
        return self.proj(out)


class _FusionBlock(nn.Module):
    def __init__(self, d: int, heads: int, mlp_ratio: float, tokens: int, token_conv: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.attn_img = _KVAttention(d, heads)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.mlp1 = _Mlp(d, int(d * mlp_ratio))
        self.norm3 = nn.LayerNorm(d, eps=1e-6)
        self.attn_lm = _KVAttention(d, heads)
        self.norm4 = nn.LayerNorm(d, eps=1e-6)
        self.mlp2 = _Mlp(d, int(d * mlp_ratio))
        self.token_conv = token_conv
        if token_conv:
            self.conv = nn.Conv1d(tokens, tokens, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[1] // 2
        y = self.norm1(x)
        x_img = x[:, :half] + self.attn_img(y[:, :half], y[:, half:])
        x_img = x_img + self.mlp1(self.norm2(x_img))
        y = self.norm3(x)
        x_lm = x[:, half:] + self.attn_lm(y[:, half:], y[:, :half])
        x_lm = x_lm + self.mlp2(self.norm4(x_lm))
        out = torch.cat((x_img, x_lm), dim=1)
        return self.conv(out) if self.token_conv else out


class _PyramidLevel(nn.Module):
    def __init__(self, dims: tuple[int, int, int], heads: int, mlp_ratio: float, tokens: int,
                 token_conv: bool) -> None:
        super().__init__()
        self.block_l = _FusionBlock(dims[0], heads, mlp_ratio, tokens, token_conv)
        self.block_m = _FusionBlock(dims[1], heads, mlp_ratio, tokens, token_conv)
        self.block_s = _FusionBlock(dims[2], heads, mlp_ratio, tokens, token_conv)
        self.upsample_m = nn.ConvTranspose1d(tokens, tokens, 2, 2)
        self.upsample_s = nn.ConvTranspose1d(tokens, tokens, 2, 2)

    def forward(self, x_l: torch.Tensor, x_m: torch.Tensor, x_s: torch.Tensor):
        x_l, x_m, x_s = self.block_l(x_l), self.block_m(x_m), self.block_s(x_s)
        x_m = self.upsample_s(x_s) + x_m
        x_l = x_l + self.upsample_m(x_m)
        return x_l, x_m, x_s


class _PyramidFuse(nn.Module):
    def __init__(self, depth: int = 8, dims: tuple[int, int, int] = (512, 256, 128), heads: int = 8,
                 mlp_ratio: float = 2.0, token_conv: bool = True) -> None:
        super().__init__()
        tokens = 100
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims[0]))  # in the checkpoints, never used
        self.pos_embed = nn.Parameter(torch.zeros(1, 50, dims[0]))
        self.downsample_m = nn.Conv1d(tokens, tokens, 2, 2)
        self.downsample_s = nn.Conv1d(tokens, tokens, 4, 4)
        self.blocks = nn.ModuleList(_PyramidLevel(dims, heads, mlp_ratio, tokens, token_conv) for _ in range(depth))
        self.norm = nn.LayerNorm(dims[0], eps=1e-6)

    def forward(self, x_img: torch.Tensor, x_lm: torch.Tensor) -> torch.Tensor:
        x_img = torch.cat((x_img.mean(1, keepdim=True), x_img), dim=1) + self.pos_embed
        x_lm = torch.cat((x_lm.mean(1, keepdim=True), x_lm), dim=1)
        x = torch.cat((x_img, x_lm), dim=1)
        x_l, x_m, x_s = x, self.downsample_m(x), self.downsample_s(x)
        for blk in self.blocks:
            x_l, x_m, x_s = blk(x_l, x_m, x_s)
        return self.norm(x_l)[:, 0]


class _SE(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d, d)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Linear(d, d)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.linear2(self.relu(self.linear1(x))))


class _Head(nn.Module):
    def __init__(self, d: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class ReferencePoster(nn.Module):
    """The official POSTER v1 forward: returns ``(logits, features)`` like the authors' model."""

    def __init__(self, num_classes: int = 7, token_conv: bool = True, depth: int = 8) -> None:
        super().__init__()
        self.face_landback = _MobileFaceNet()
        self.face_landback.requires_grad_(False)
        self.ir_back = _IR50()
        self.ir_layer = nn.Linear(1024, 512)
        self.pyramid_fuse = _PyramidFuse(depth=depth, token_conv=token_conv)
        self.se_block = _SE(512)
        self.head = _Head(512, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        x_face = F.interpolate(x, size=112)
        _landmarks, x_face = self.face_landback(x_face)  # the 136-d output is discarded, as upstream
        x_face = x_face.view(b, -1, 49).transpose(1, 2)  # (B, 49, 512)
        x_ir = self.ir_back(x)  # (B, 256, 14, 14)
        x_ir = self.ir_layer(x_ir.view(b, 49, -1))  # raw reinterpretation of NCHW memory -> (B, 49, 512)
        feat = self.se_block(self.pyramid_fuse(x_ir, x_face))
        return self.head(feat), feat


def reference_poster(state_dict: dict[str, torch.Tensor] | None = None, num_classes: int = 7,
                     token_conv: bool = True) -> ReferencePoster:
    """Build the reference in eval mode, loading an official-layout ``state_dict`` strictly if given."""
    model = ReferencePoster(num_classes=num_classes, token_conv=token_conv)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.eval()
