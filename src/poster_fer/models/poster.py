"""POSTER (v1): the two-stream Pyramid Cross-Fusion Transformer, and the paper's Table-4 ablations.

Structure as the official code computes it (see ``shared/docs/official-poster.md``):

* both backbones see the input resized to 112 (nearest); IR-50's first three stages give a (B,256,14,14)
  map that the official code reinterprets with a raw ``view`` as 49 tokens of 1024 values, projected to 512
  by ``ir_layer``; MobileFaceNet's ``conv_6_sep`` map gives 49 landmark tokens of 512;
* each stream gets its token mean prepended as a "class" token, the image stream adds ``pos_embed``;
* the 100 concatenated tokens go through ``depth`` pyramid blocks at widths 512/256/128 whose cross-fusion
  blocks let each stream's normed tokens be the other's queries, with a 1x1 ``Conv1d`` over tokens at the end
  of each block (absent in the official AffectNet variant);
* LayerNorm, token 0, an SE gate and a linear head.

The same blocks, chosen by config, give the Table-4 variants: one stream only, concatenation with vanilla
self-attention encoders, with or without the pyramid, cross-fusion without the pyramid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from .arcface_mobilefacenet import ArcFaceMobileFaceNet
from .base import FERModel
from .dlib_resnet import DLIB_MEAN_RGB, DLIB_SCALE, DlibResNet
from .ir import IRBackbone, IRConfig
from .layers import ClassificationHead, CrossAttention, DropPath, Mlp, SEBlock, ViTBlock, adaptive_avg_pool
from .mobilefacenet import MobileFaceNet
from .registry import check_ranges, register_family, register_model

IMAGE_BACKBONES = ("ir", "arcface_mobilefacenet", "dlib_resnet")
_DEFAULT_LAYER = {"arcface_mobilefacenet": "stage4", "dlib_resnet": "level2"}


#: Sanity ranges of the config fields (far above any real network; see :func:`registry.check_ranges`).
_LIMITS = {"num_classes": (1, 100_000), "input_size": (8, 1024), "backbone_size": (8, 1024),
           "landmark_size": (8, 1024), "dims": (1, 8192), "depth": (1, 64), "heads": (1, 64),
           "mlp_ratio": (0.01, 16), "drop_path": (0, 1), "input_mean": (-1e3, 1e3), "input_std": (1e-6, 1e3)}
_IR_LIMITS = {"units": (0, 64), "widths": (1, 4096), "stem_width": (1, 4096)}


@dataclass
class PosterConfig:
    """POSTER v1 family configuration.

    Args:
        num_classes: classifier outputs.
        input_size: side of the (normalised) tensor the model is given; the official recipe feeds 224.
        backbone_size: side both backbones actually see (the official code resizes to 112, nearest).
        landmark_size: side the landmark network sees, if different (it was trained at 112; CPU-sized models
            can run the image stream at a lower resolution and keep landmarks at 112).
        resize_mode: ``F.interpolate`` mode for that resize.
        streams: ``"both"``, ``"image"`` (IR only) or ``"landmark"`` (MobileFaceNet only).
        fusion: ``"cross"`` (cross-fusion blocks; needs both streams) or ``"self"`` (vanilla encoders over
            the concatenated tokens: the paper's baseline).
        pyramid: run the blocks at ``dims`` widths (512/256/128) with down/up-sampling between levels.
        dims: embedding widths per pyramid level, each half the previous.
        depth: pyramid (or plain) blocks.
        heads: attention heads at every level.
        mlp_ratio: MLP hidden width / embedding width.
        drop_path: largest stochastic-depth rate (linearly spaced over blocks; official 0.1, paper 0.01).
        token_conv: the per-block ``Conv1d(N, N, 1)`` token mixer (official RAF-DB: on; AffectNet: off).
        query_projection: add the paper's W_Q projections (Eq. 5-6); the official code has none.
        image_tokens: ``"view"`` reinterprets the IR map's memory as 49 tokens exactly as the official code;
            ``"pool"`` average-pools it to a 7x7 grid of channel vectors (any resolution).
        landmark_train_mode: leave the frozen landmark network in train mode while training, as the official
            code does (its BN statistics then drift); default keeps it in eval mode.
        ir: the IR backbone's stages and widths.
        image_backbone: the image stream's network: ``"ir"`` (IR-50 family, the paper's), or a face-recognition
            network loadable from a registry file (``"arcface_mobilefacenet"``, ``"dlib_resnet"``; see
            :mod:`poster_fer.weights.face_backbones`), tapped at ``image_layer`` and pooled to 7x7 tokens.
        image_layer: the feature map a face-recognition backbone gives (default: ``stage4`` of MobileFaceNet,
            14x14x128 at 112 px, the counterpart of IR-50's third stage; ``level2`` of dlib's ResNet).
        input_mean, input_std: the normalisation of the tensor the model is given; a face-recognition backbone
            converts it back to its own (ArcFace ``(p - 127.5) / 128``, dlib ``(p - mean) / 256``).
    """

    num_classes: int = 7
    input_size: int = 224
    backbone_size: int = 112
    landmark_size: int | None = None
    resize_mode: str = "nearest"
    streams: str = "both"
    fusion: str = "cross"
    pyramid: bool = True
    dims: tuple[int, ...] = (512, 256, 128)
    depth: int = 8
    heads: int = 8
    mlp_ratio: float = 2.0
    drop_path: float = 0.1
    token_conv: bool = True
    query_projection: bool = False
    image_tokens: str = "view"
    landmark_train_mode: bool = False
    ir: IRConfig = field(default_factory=IRConfig)
    image_backbone: str = "ir"
    image_layer: str | None = None
    input_mean: tuple[float, ...] = IMAGENET_MEAN
    input_std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PosterConfig:
        values = dict(values)
        ir = values.pop("ir", None)
        if isinstance(ir, dict):
            ir = IRConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ir.items()})
        for key in ("dims", "input_mean", "input_std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values, **({"ir": ir} if ir is not None else {}))

    def __post_init__(self) -> None:
        check_ranges(self, _LIMITS)
        check_ranges(self.ir, _IR_LIMITS)
        if self.streams not in ("both", "image", "landmark"):
            raise ValueError(f"streams must be 'both', 'image' or 'landmark', not {self.streams!r}")
        if self.fusion not in ("cross", "self"):
            raise ValueError(f"fusion must be 'cross' or 'self', not {self.fusion!r}")
        if self.fusion == "cross" and self.streams != "both":
            raise ValueError("cross-fusion needs both streams (use fusion='self' for a single stream)")
        if self.image_tokens not in ("view", "pool"):
            raise ValueError(f"image_tokens must be 'view' or 'pool', not {self.image_tokens!r}")
        if self.image_backbone not in IMAGE_BACKBONES:
            raise ValueError(f"image_backbone must be one of {', '.join(IMAGE_BACKBONES)}, not {self.image_backbone!r}")
        if self.image_backbone != "ir" and self.image_tokens != "pool":
            raise ValueError(f"image_backbone={self.image_backbone!r} needs image_tokens='pool'")
        if self.image_backbone == "ir" and self.image_layer is not None:
            raise ValueError("image_layer applies to face-recognition backbones, not the IR stream")
        levels = self.dims if self.pyramid else self.dims[:1]
        for i, d in enumerate(levels):
            if d != self.dims[0] >> i or d % self.heads:
                raise ValueError(f"dims {self.dims}: each level must halve the previous and divide by heads "
                                 f"({self.heads})")


class CrossFusionBlock(nn.Module):
    """One width's cross-fusion block over ``[image tokens | landmark tokens]``.

    Each stream attends with the *other* stream's normed tokens as queries (landmarks guide the image, the
    image gives landmarks context); both branches then get an MLP; ``conv`` mixes the tokens.
    """

    def __init__(self, cfg: PosterConfig, dim: int, num_tokens: int, drop_path: float) -> None:
        """``dim`` is the pyramid level's width and ``drop_path`` this block's rate; heads, MLP ratio, the token
        conv and the query projection come from ``cfg``."""
        super().__init__()
        eps, heads, hidden = 1e-6, cfg.heads, int(dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn_img = CrossAttention(dim, heads, query_projection=cfg.query_projection)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp1 = Mlp(dim, hidden)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.attn_lm = CrossAttention(dim, heads, query_projection=cfg.query_projection)
        self.norm4 = nn.LayerNorm(dim, eps=eps)
        self.mlp2 = Mlp(dim, hidden)
        self.drop_path = DropPath(drop_path)
        self.conv = nn.Conv1d(num_tokens, num_tokens, 1) if cfg.token_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1] // 2
        img, lm = x[:, :n], x[:, n:]
        y = self.norm1(x)
        img = img + self.drop_path(self.attn_img(y[:, :n], query=y[:, n:]))
        img = img + self.drop_path(self.mlp1(self.norm2(img)))
        y = self.norm3(x)
        lm = lm + self.drop_path(self.attn_lm(y[:, n:], query=y[:, :n]))
        lm = lm + self.drop_path(self.mlp2(self.norm4(lm)))
        out = torch.cat([img, lm], dim=1)
        return self.conv(out) if self.conv is not None else out


class PyramidBlock(nn.Module):
    """Blocks at every pyramid level, then fine levels take the upsampled coarse ones."""

    def __init__(self, blocks: list[nn.Module], num_tokens: int) -> None:
        super().__init__()
        names = ("block_l", "block_m", "block_s")
        for name, blk in zip(names, blocks, strict=False):
            self.add_module(name, blk)
        self.levels = len(blocks)
        if self.levels > 1:
            self.upsample_m = nn.ConvTranspose1d(num_tokens, num_tokens, 2, 2)
        if self.levels > 2:
            self.upsample_s = nn.ConvTranspose1d(num_tokens, num_tokens, 2, 2)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.levels == 1:
            return [self.block_l(xs[0])]
        x_l, x_m = self.block_l(xs[0]), self.block_m(xs[1])
        if self.levels > 2:
            x_s = self.block_s(xs[2])
            x_m = self.upsample_s(x_s) + x_m  # (B, N, d/4) -> (B, N, d/2)
        x_l = x_l + self.upsample_m(x_m)  # (B, N, d/2) -> (B, N, d)
        return [x_l, x_m] + ([x_s] if self.levels > 2 else [])


class PyramidFusion(nn.Module):
    """Token preparation and the stack of pyramid blocks (``pyramid_fuse`` in the official checkpoints)."""

    def __init__(self, cfg: PosterConfig, num_tokens: int, image_tokens: int) -> None:
        super().__init__()
        self.image_tokens = image_tokens  # tokens (incl. mean token) that get the position embedding
        d = cfg.dims[0]
        if image_tokens:
            self.pos_embed = nn.Parameter(torch.zeros(1, image_tokens, d))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        levels = len(cfg.dims) if cfg.pyramid else 1
        if levels > 1:
            self.downsample_m = nn.Conv1d(num_tokens, num_tokens, 2, 2)
        if levels > 2:
            self.downsample_s = nn.Conv1d(num_tokens, num_tokens, 4, 4)
        rates = torch.linspace(0, cfg.drop_path, cfg.depth, device="cpu").tolist()  # cpu: also under a meta device

        def block(dim: int, rate: float) -> nn.Module:
            if cfg.fusion == "cross":
                return CrossFusionBlock(cfg, dim, num_tokens, rate)
            return ViTBlock(dim, cfg.heads, cfg.mlp_ratio, rate)

        self.blocks = nn.ModuleList(
            PyramidBlock([block(cfg.dims[lv], r) for lv in range(levels)], num_tokens) for r in rates
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)

    def forward(self, streams: list[torch.Tensor]) -> torch.Tensor:
        toks = []
        for i, t in enumerate(streams):  # each (B, 49, d)
            t = torch.cat([t.mean(dim=1, keepdim=True), t], dim=1)  # mean "class" token -> (B, 50, d)
            if i == 0 and self.image_tokens:
                t = t + self.pos_embed
            toks.append(t)
        x = torch.cat(toks, dim=1)  # (B, N, d)
        xs = [x]
        if hasattr(self, "downsample_m"):
            xs.append(self.downsample_m(x))  # (B, N, d/2)
        if hasattr(self, "downsample_s"):
            xs.append(self.downsample_s(x))  # (B, N, d/4)
        for blk in self.blocks:
            xs = blk(xs)
        return self.norm(xs[0])[:, 0]  # (B, d): the image stream's class token (or the only stream's)


class Poster(FERModel):
    """POSTER and its ablations. ``forward(x)`` -> logits; ``forward_features(x)`` -> the SE-gated feature."""

    def __init__(self, cfg: PosterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dims[0]
        self.use_image = cfg.streams in ("both", "image")
        self.use_landmark = cfg.streams in ("both", "landmark")
        if self.use_landmark:
            self.face_landback = MobileFaceNet(with_head=False)
            self.face_landback.requires_grad_(False)
            self.lm_layer = nn.Linear(512, d) if d != 512 else None
        if self.use_image and cfg.image_backbone != "ir":
            self.face_back = build_face_backbone(cfg)
            self._register_backbone_norm(cfg)
            self.ir_layer = nn.Linear(self.face_back.out_channels, d)
        elif self.use_image:
            self.ir_back = IRBackbone(cfg.ir)
            grid = cfg.backbone_size // 2 ** len(cfg.ir.units)
            c = cfg.ir.widths[-1]
            if cfg.image_tokens == "view":
                if (c * grid * grid) % 49:
                    raise ValueError(f"image_tokens='view' needs the IR map ({c}x{grid}x{grid}) to split into "
                                     "49 tokens; use image_tokens='pool'")
                in_features = c * grid * grid // 49
            else:
                in_features = c
            self.ir_layer = nn.Linear(in_features, d)
        streams = int(self.use_image) + int(self.use_landmark)
        self.pyramid_fuse = PyramidFusion(cfg, num_tokens=50 * streams, image_tokens=50 if self.use_image else 0)
        self.se_block = SEBlock(d)
        self.head = ClassificationHead(d, cfg.num_classes)
        self.num_features = d

    def train(self, mode: bool = True) -> Poster:
        super().train(mode)
        if self.use_landmark and not self.cfg.landmark_train_mode:
            self.face_landback.eval()  # frozen network: keep its BN statistics fixed
        return self

    def _resize(self, x: torch.Tensor, size: int | None = None) -> torch.Tensor:
        s = size or self.cfg.backbone_size
        return x if x.shape[-2:] == (s, s) else F.interpolate(x, size=s, mode=self.cfg.resize_mode)

    def _register_backbone_norm(self, cfg: PosterConfig) -> None:
        """Per-channel affine from the model's input normalisation to the face backbone's own."""
        mean = torch.tensor(cfg.input_mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(cfg.input_std, dtype=torch.float32).view(1, -1, 1, 1)
        if cfg.image_backbone == "arcface_mobilefacenet":
            # pixel = 255 * (x * std + mean); backbone wants (pixel - 127.5) / 128
            scale, shift = 255.0 * std / 128.0, (255.0 * mean - 127.5) / 128.0
        else:
            bb_mean = torch.tensor(DLIB_MEAN_RGB).view(1, -1, 1, 1)
            scale, shift = 255.0 * std / DLIB_SCALE, (255.0 * mean - bb_mean) / DLIB_SCALE
        # Not saved: derived from the config, so checkpoints of IR models and of these stay alike.
        self.register_buffer("backbone_scale", scale, persistent=False)
        self.register_buffer("backbone_shift", shift, persistent=False)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image-stream tokens before projection: (B, 3, H, W) -> (B, 49, C)."""
        if self.cfg.image_backbone != "ir":
            x = self._resize(x)
            m = self.face_back(x * self.backbone_scale + self.backbone_shift)
            return adaptive_avg_pool(m, 7).flatten(2).transpose(1, 2)
        m = self.ir_back(self._resize(x))  # (B, 256, 14, 14) at 112
        b = m.shape[0]
        if self.cfg.image_tokens == "view":
            # Official: raw reinterpretation of NCHW memory, not spatial patches (token 0 = channels 0..5).
            return m.reshape(b, 49, -1)
        return adaptive_avg_pool(m, 7).flatten(2).transpose(1, 2)  # (B, 49, C)

    def landmark_features(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen landmark tokens: (B, 3, H, W) -> (B, 49, 512). Cacheable: they never train."""
        (m,) = self.face_landback(self._resize(x, self.cfg.landmark_size))  # (B, 512, 7, 7) at 112
        if m.shape[-2:] != (7, 7):
            m = adaptive_avg_pool(m, 7)
        return m.flatten(2).transpose(1, 2)

    def forward_features(self, x: torch.Tensor, landmark_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled, SE-gated feature the head sees (B, dims[0]).

        ``landmark_tokens`` may be precomputed :meth:`landmark_features` (the landmark network is frozen).
        """
        streams = []
        if self.use_image:
            streams.append(self.ir_layer(self.image_features(x)))  # (B, 49, d)
        if self.use_landmark:
            lm = self.landmark_features(x) if landmark_tokens is None else landmark_tokens
            streams.append(self.lm_layer(lm) if self.lm_layer is not None else lm)
        return self.se_block(self.pyramid_fuse(streams))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor, landmark_tokens: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.forward_features(x, landmark_tokens))

    def official_dead_keys(self) -> tuple[str, ...]:
        """Official key prefixes that this model does not build (they never run in the official code)."""
        return ("ir_back.output_layer.", "pyramid_fuse.cls_token", "face_landback.output_layer.")


def build_face_backbone(cfg: PosterConfig) -> nn.Module:
    """The face-recognition network of ``cfg.image_backbone``, built up to ``cfg.image_layer`` (random init)."""
    layer = cfg.image_layer or _DEFAULT_LAYER[cfg.image_backbone]
    if cfg.image_backbone == "arcface_mobilefacenet":
        return ArcFaceMobileFaceNet(last=layer)
    return DlibResNet(last=layer)


register_family("poster_v1", Poster, PosterConfig)

_TINY = dict(dims=(64, 32, 16), depth=1, heads=2, ir=IRConfig(units=(1, 1, 1), widths=(16, 32, 64), stem_width=16),
             drop_path=0.0)

register_model("poster_v1", "poster_v1")
register_model("poster_v1_affectnet", "poster_v1", token_conv=False)
register_model("poster_v1_landmark_only", "poster_v1", streams="landmark", fusion="self", pyramid=False)
register_model("poster_v1_image_only", "poster_v1", streams="image", fusion="self", pyramid=False)
register_model("poster_v1_baseline", "poster_v1", fusion="self", pyramid=False)
register_model("poster_v1_baseline_pyramid", "poster_v1", fusion="self", pyramid=True)
register_model("poster_v1_baseline_crossfusion", "poster_v1", fusion="cross", pyramid=False)
# Architectures of the models trained here on FER+ (their weights: poster_fer.weights.records, named
# ``<architecture>.ferplus``; docs/model-card.md). The defaults keep FER+'s 8 classes, the 48 px input of FER
# crops and the pooled 7x7 image tokens; landmarks run at 80 px (as good as 112 here, half the cost).
_SMALL: dict[str, Any] = dict(num_classes=8, input_size=48, landmark_size=80, image_tokens="pool", dims=(128, 64, 32),
                              depth=2, heads=4, mlp_ratio=2.0, drop_path=0.1)
_IMAGE_ONLY: dict[str, Any] = dict(streams="image", fusion="self", pyramid=False)
_SMALL_IR = IRConfig(units=(1, 2, 2), widths=(48, 96, 192), stem_width=32)
# The ArcFace MobileFaceNet image stream (MS1M; the stand-in for IR-50), tapped at its stage-4 map (14x14x128 at
# 112 px, 8x8 at 64 px, pooled to 7x7 tokens); its weights load with
# model.pretrained.face_backbone=PATH/mobilefacenet.json (poster_fer.weights.face_backbones). The ``ir`` entry is
# the recipes' inherited, unused IR config, kept so the shipped checkpoints' configs equal the registered ones.
_MFN: dict[str, Any] = dict(_SMALL, resize_mode="bilinear", image_backbone="arcface_mobilefacenet",
                            image_layer="stage4", ir=_SMALL_IR)

register_model("poster_v1_s", "poster_v1",
               backbone_size=48, ir=_SMALL_IR, **_SMALL)
register_model("poster_v1_s_image", "poster_v1",
               backbone_size=48, ir=_SMALL_IR, **_SMALL, **_IMAGE_ONLY)
register_model("poster_v1_mfn", "poster_v1",
               backbone_size=112, **_MFN)
register_model("poster_v1_mfn_image", "poster_v1",
               backbone_size=112, **_MFN, **_IMAGE_ONLY)
# At 64 px an epoch costs about a third of 112 px and the photo pipeline runs as fast as with the 48 px IR stream;
# poster_v1_mfn64_image is the default model's architecture, poster_v1_mfn64 the paper's two-stream POSTER over
# the same image stream (issue 23, configs/table4_mfn64.yaml).
register_model("poster_v1_mfn64_image", "poster_v1",
               backbone_size=64, **_MFN, **_IMAGE_ONLY)
register_model("poster_v1_mfn64", "poster_v1",
               backbone_size=64, **_MFN)
# The other Table-4 rows at the same scale (configs/table4_mfn64_*.yaml): registered so a trained run can be saved,
# evaluated and loaded under an architecture name like every variant (benchmarks/default_model.py checks the run's
# config equals the name's).
for _name, _fields in (("poster_v1_mfn64_baseline", dict(fusion="self", pyramid=False)),
                       ("poster_v1_mfn64_baseline_pyramid", dict(fusion="self", pyramid=True)),
                       ("poster_v1_mfn64_crossfusion", dict(fusion="cross", pyramid=False))):
    register_model(_name, "poster_v1", backbone_size=64, **_MFN, **_fields)
register_model("poster_v1_dlib", "poster_v1",
               num_classes=8, input_size=48, backbone_size=150, landmark_size=80, image_tokens="pool",
               resize_mode="bilinear", dims=(128, 64, 32), depth=2, heads=4, mlp_ratio=2.0, drop_path=0.1,
               image_backbone="dlib_resnet", image_layer="level2")
# Names from before architectures and weights were split (issue 22) keep building their architecture with a
# DeprecationWarning: poster_fer.architectures.RETIRED; as weight names they map to ``<architecture>.ferplus``.
register_model("poster_v1_tiny", "poster_v1", **_TINY)
register_model("poster_v1_tiny_mfn", "poster_v1",
               dims=(64, 32, 16), depth=1, heads=2, drop_path=0.0, input_size=48, backbone_size=64,
               landmark_size=64, image_tokens="pool", image_backbone="arcface_mobilefacenet", image_layer="stage2")
register_model("poster_v1_tiny_dlib", "poster_v1",
               dims=(64, 32, 16), depth=1, heads=2, drop_path=0.0, input_size=48, backbone_size=64,
               landmark_size=64, image_tokens="pool", image_backbone="dlib_resnet", image_layer="level4")
register_model("poster_v1_tiny_image_only", "poster_v1",
               streams="image", fusion="self", pyramid=False, **_TINY)
