"""POSTER++ (POSTER V2): landmark-to-image window cross-attention at three scales, then a small ViT.

As the official code computes it (``shared/docs/official-poster.md``): IR-50 stages 1-3 give maps of
64/128/256 channels at 56/28/14, each downsampled by a strided conv to 28/14/7; MobileFaceNet's ``conv_3``,
``conv_4`` and ``conv_6_sep`` (through ``last_face_conv``) give landmark maps of the same shapes. At each scale
the LayerNorm-ed image map provides keys and values and the raw landmark map, split into heads, provides the
queries (no projection), with a Swin-style relative position bias over one window covering the whole map;
a LayerScale feed-forward follows. The three results are embedded to 768-d tokens (49 each) and classified by a
2-block ViT with an SE gate. One class serves 7 and 8 classes (``num_classes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import FERModel
from .ir import IRBackbone, IRConfig
from .layers import AttentionCore, ClassificationHead, DropPath, Mlp, SEBlock, ViTBlock, merge_heads
from .mobilefacenet import MobileFaceNet
from .registry import check_ranges, register_family, register_model


def _v2_ir() -> IRConfig:
    return IRConfig(split_stages=True)


@dataclass
class PosterV2Config:
    """POSTER++ configuration.

    Args:
        num_classes: classifier outputs (7 or 8 for the official checkpoints).
        input_size: side of the tensor the model is given (official: 224).
        backbone_size: side both backbones see (official: 112, nearest resize).
        heads: attention heads per scale.
        ffn_drop_path: stochastic depth of each scale's feed-forward.
        layer_scale: LayerScale initial value of the feed-forwards.
        embed_dim, vit_depth, vit_heads, vit_mlp_ratio, vit_drop_path: the final ViT.
        landmark_train_mode: leave the frozen landmark network in train mode while training (official).
        ir: IR backbone; its stage widths must stay (64, 128, 256) to match the landmark maps.
    """

    num_classes: int = 7
    input_size: int = 224
    backbone_size: int = 112
    resize_mode: str = "nearest"
    heads: tuple[int, ...] = (2, 4, 8)
    ffn_mlp_ratio: float = 4.0
    ffn_drop_path: tuple[float, ...] = (0.0, 0.125, 0.25)
    layer_scale: float = 1e-5
    embed_dim: int = 768
    vit_depth: int = 2
    vit_heads: int = 8
    vit_mlp_ratio: float = 4.0
    vit_drop_path: float = 0.0
    landmark_train_mode: bool = False
    ir: IRConfig = field(default_factory=_v2_ir)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PosterV2Config:
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        ir = values.pop("ir", None)
        if isinstance(ir, dict):
            ir = IRConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ir.items()})
        return cls(**values, **({"ir": ir} if ir is not None else {}))

    def __post_init__(self) -> None:
        check_ranges(self, {"num_classes": (1, 100_000), "input_size": (8, 1024), "backbone_size": (16, 1024),
                            "heads": (1, 64), "ffn_mlp_ratio": (0.01, 16), "ffn_drop_path": (0, 1),
                            "embed_dim": (1, 8192), "vit_depth": (0, 64), "vit_heads": (1, 64),
                            "vit_mlp_ratio": (0.01, 16), "vit_drop_path": (0, 1)})
        check_ranges(self.ir, {"units": (0, 64), "widths": (1, 4096), "stem_width": (1, 4096)})
        if tuple(self.ir.widths) != (64, 128, 256) or not self.ir.split_stages:
            raise ValueError("POSTER++ needs IR stage widths (64, 128, 256) with split stages: its queries are "
                             "MobileFaceNet maps of those widths")
        if self.backbone_size % 16:
            raise ValueError(f"backbone_size must be a multiple of 16, not {self.backbone_size}")


def relative_position_index(window: int) -> torch.Tensor:
    """Swin's index into a ((2w-1)^2, heads) bias table for every pair of positions in a w x w window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # (N, N, 2), >= 0
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


class WindowNorm(nn.Module):
    """LayerNorm over channels of a NCHW map, returned channels-last (``window_i`` in the checkpoints)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1))  # (B, C, H, W) -> (B, H, W, C)


class LandmarkWindowAttention(nn.Module):
    """Image keys/values, landmark queries (no projection), relative position bias; one window per map."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 2)  # named qkv officially, but it computes only k and v
        self.core = AttentionCore()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, query_map: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape  # (B, H*W, C)
        hd = c // self.heads
        kv = self.qkv(x).reshape(b, n, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        q = query_map.permute(0, 2, 3, 1).reshape(b, n, self.heads, hd).transpose(1, 2)  # (B, h, N, hd)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(n, n, self.heads).permute(2, 0, 1).unsqueeze(0)  # (1, h, N, N)
        return self.proj(merge_heads(self.core(q, kv[0], kv[1], bias)))


class LayerScaleFFN(nn.Module):
    """``x = shortcut + gamma1 * attn``; ``x = x + gamma2 * mlp(norm(x))`` (``ffn_i`` in the checkpoints)."""

    def __init__(self, dim: int, mlp_ratio: float, layer_scale: float, drop_path: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim))
        self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, attn_out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        x = shortcut + self.drop_path(self.gamma1 * attn_out.reshape(shortcut.shape))  # (B, H, W, C)
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm(x)))


class PatchProj(nn.Module):
    """1x1 conv token embedding (``embed_v.proj``)."""

    def __init__(self, in_ch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PosterV2ViT(nn.Module):
    """Class token + position embedding, pre-norm blocks, norm, SE gate and head (``VIT`` officially)."""

    def __init__(self, cfg: PosterV2Config, num_tokens: int) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1, d))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        rates = torch.linspace(0, cfg.vit_drop_path, cfg.vit_depth, device="cpu").tolist()  # cpu: also under meta
        self.blocks = nn.Sequential(*[ViTBlock(d, cfg.vit_heads, cfg.vit_mlp_ratio, r) for r in rates])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.se_block = SEBlock(d)
        self.head = ClassificationHead(d, cfg.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.se_block(self.norm(self.blocks(x))[:, 0])


class PosterV2(FERModel):
    """POSTER++. ``forward(x)`` -> logits; ``forward_features(x)`` -> the SE-gated class token."""

    def __init__(self, cfg: PosterV2Config) -> None:
        super().__init__()
        self.cfg = cfg
        dims = cfg.ir.widths
        windows = [cfg.backbone_size // 4, cfg.backbone_size // 8, cfg.backbone_size // 16]
        self.face_landback = MobileFaceNet(with_head=False, return_maps=("conv_3", "conv_4", "conv_6_sep"))
        self.face_landback.requires_grad_(False)
        self.ir_back = IRBackbone(cfg.ir)
        self.last_face_conv = nn.Conv2d(512, dims[2], 3, padding=1)
        for i, (d, h, w, dp) in enumerate(zip(dims, cfg.heads, windows, cfg.ffn_drop_path, strict=True), start=1):
            self.add_module(f"conv{i}", nn.Conv2d(d, d, 3, 2, 1))
            self.add_module(f"window{i}", WindowNorm(d))
            self.add_module(f"attn{i}", LandmarkWindowAttention(d, h, w))
            self.add_module(f"ffn{i}", LayerScaleFFN(d, cfg.ffn_mlp_ratio, cfg.layer_scale, dp))
        e = cfg.embed_dim
        self.embed_q = nn.Sequential(nn.Conv2d(dims[0], e, 3, 2, 1), nn.Conv2d(e, e, 3, 2, 1))
        self.embed_k = nn.Sequential(nn.Conv2d(dims[1], e, 3, 2, 1))
        self.embed_v = PatchProj(dims[2], e)
        self.VIT = PosterV2ViT(cfg, num_tokens=3 * windows[2] ** 2)
        self.num_features = e

    def train(self, mode: bool = True) -> PosterV2:
        super().train(mode)
        if not self.cfg.landmark_train_mode:
            self.face_landback.eval()
        return self

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        s = self.cfg.backbone_size
        return x if x.shape[-2:] == (s, s) else F.interpolate(x, size=s, mode=self.cfg.resize_mode)

    def landmark_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Frozen landmark maps (B,64,28,28), (B,128,14,14), (B,512,7,7) at 112."""
        return self.face_landback(self._resize(x))

    def forward_features(self, x: torch.Tensor, landmark_maps: list[torch.Tensor] | None = None) -> torch.Tensor:
        faces = list(self.landmark_features(x) if landmark_maps is None else landmark_maps)
        faces[2] = self.last_face_conv(faces[2])  # (B, 512, 7, 7) -> (B, 256, 7, 7)
        imgs = self.ir_back(self._resize(x))  # (B,64,56,56), (B,128,28,28), (B,256,14,14)
        outs = []
        for i, (img, face) in enumerate(zip(imgs, faces, strict=True), start=1):
            img = getattr(self, f"conv{i}")(img)  # halve: 56->28, 28->14, 14->7
            shortcut = getattr(self, f"window{i}")(img)  # (B, H, W, C), normed
            b, h, w, c = shortcut.shape
            o = getattr(self, f"attn{i}")(shortcut.reshape(b, h * w, c), face)
            o = getattr(self, f"ffn{i}")(o, shortcut)  # (B, H, W, C)
            outs.append(o.permute(0, 3, 1, 2))
        tokens = torch.cat([
            self.embed_q(outs[0]).flatten(2).transpose(1, 2),  # (B, 49, e)
            self.embed_k(outs[1]).flatten(2).transpose(1, 2),
            self.embed_v(outs[2]).flatten(2).transpose(1, 2),
        ], dim=1)  # (B, 147, e)
        return self.VIT.forward_features(tokens)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.VIT.head(features)

    def forward(self, x: torch.Tensor, landmark_maps: list[torch.Tensor] | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, landmark_maps))

    def official_dead_keys(self) -> tuple[str, ...]:
        return ("ir_back.output_layer.", "face_landback.output_layer.", "VIT.patch_embed.", "VIT.CON1.",
                "VIT.IRLinear1.", "VIT.IRLinear2.", "VIT.eca_block.", r"re:^VIT\.blocks\.\d+\.conv\.")


register_family("poster_v2", PosterV2, PosterV2Config)
register_model("poster_v2", "poster_v2")
register_model("poster_v2_tiny", "poster_v2",
               ir=IRConfig(units=(1, 1, 1), split_stages=True), embed_dim=64, vit_depth=1, vit_heads=2)
