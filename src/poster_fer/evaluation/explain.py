"""Relevance maps per stream (image and landmark) for POSTER and POSTER++ (the paper's Fig. 7).

The method is the gradient-weighted attention rollout of Chefer, Gur and Wolf ("Transformer interpretability
beyond attention visualization", CVPR 2021, and its attention-only form in "Generic attention-model
explainability for interpreting bi-modal and encoder-decoder transformers", ICCV 2021): for every attention
matrix ``A`` (B, heads, Nq, Nk) with gradient ``dA`` of the target-class logit,
``Abar = mean_heads(relu(dA * A))``, and relevance is rolled out in forward order as ``R <- R + Abar @ R``
from ``R = I``; a token's relevance is the row of the token the head reads. How that maps onto each
architecture (see ``docs/evaluation.md`` for the reasoning and caveats):

POSTER (v1). Token positions are ``[image mean-token, 49 image tokens | landmark mean-token, 49 landmark
tokens]``. In a cross-fusion block ``attn_img`` mixes *image* values into image position ``p`` with the
weights that landmark token ``p``'s query chooses (and ``attn_lm`` the reverse), so each stream's attention
mixes that stream's own tokens: the image stream is rolled out over the ``attn_img`` matrices and the
landmark stream over the ``attn_lm`` ones, separately per pyramid level, and the levels' rows are summed
(unnormalised, so a level that matters more to the logit weighs more). The row is token 0 of each stream:
the image mean-token is what the head reads, and the landmark mean-token is the query that steers the
head token's cross-attention. Self-attention variants (Table 4 a-d) roll out one matrix over all tokens.
Token-mixing convolutions (the per-block ``Conv1d``, pyramid down/up-sampling) are not propagated.
The landmark tokens are MobileFaceNet's 7x7 grid, so the landmark map is spatial. The image tokens are
spatial only with ``image_tokens="pool"``; the official ``"view"`` tokens are a raw reshape of the IR map
(token ``t`` holds ~5 whole channels), so each token's relevance is spread over its own map elements in
proportion to ``relu(gradient * activation)`` and summed over channels: a 14x14 map.

POSTER++ (v2). The ViT over ``[cls, 3 x g*g tokens]`` is rolled out from the cls row, giving a g x g
relevance per scale; each token's relevance is spread (bilinearly) over the map positions its strided
embedding covers, then through that scale's window attention (image keys/values, landmark queries at the
same positions): image map = ``u + u @ Abar`` (residual plus attention). Landmark queries carry no values,
only the choice of weights, so the landmark map is the gradient-weighted attention mass each landmark
position's query issues, ``Abar.sum(-1)``. Scales are summed at the finest resolution, as relevance mass.

Every map is non-negative and scaled to a maximum of 1 per image (all zeros when nothing is relevant).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..probabilities import calibrate_logits, get_logit_bias, get_temperature

__all__ = ["METHOD_NOTES", "explain_figure", "gradient_weighted_attention", "overlay", "relevance_maps",
           "resolve_target"]

METHOD_NOTES = {
    "v1_image_pool": "grad-weighted attention rollout, image tokens (7x7 pooled image-stream grid)",
    "v1_image_view": "token rollout spread by grad x act over the IR 14x14 map ('view' tokens are not spatial)",
    "v1_landmark": "grad-weighted attention rollout, landmark tokens (7x7 MobileFaceNet grid)",
    "v2_image": "ViT rollout through the window attention, image positions",
    "v2_landmark": "grad-weighted attention mass of the landmark queries",
}


def gradient_weighted_attention(core: nn.Module) -> torch.Tensor:
    """``mean_heads(relu(dA * A))`` of a recording attention core: (B, Nq, Nk)."""
    attn, grad = core.attn, None if core.attn is None else core.attn.grad
    if attn is None or grad is None:
        raise RuntimeError("attention core has no recorded matrix/gradient; run the forward with recording on "
                           "and backpropagate the target logit first")
    return (grad * attn).clamp(min=0).mean(dim=1).detach()


def _rollout(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """``R <- R + Abar @ R`` from the identity, in forward order."""
    b, n, _ = mats[0].shape
    r = torch.eye(n, dtype=mats[0].dtype, device=mats[0].device).expand(b, n, n).clone()
    for a in mats:
        r = r + a @ r
    return r


def _normalise(maps: torch.Tensor) -> np.ndarray:
    """Non-negative, max 1 per sample (zeros stay zeros); NaN/inf are treated as no relevance."""
    m = torch.nan_to_num(maps.detach().float(), nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0)
    peak = m.flatten(1).amax(dim=1).clamp(min=1e-30).view(-1, *([1] * (m.dim() - 1)))
    return (m / peak).cpu().numpy()


def _mass_resize(m: torch.Tensor, size: int) -> torch.Tensor:
    """Upsample a (B, h, h) relevance-mass map to (B, size, size), spread smoothly (bilinear), total kept."""
    h = m.shape[-1]
    if h == size:
        return m
    up = F.interpolate(m[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return up * (h * h) / (size * size)


@contextlib.contextmanager
def _recording(model: nn.Module) -> Iterator[list[nn.Module]]:
    from ..models import set_attention_recording

    cores = set_attention_recording(model, True)
    try:
        yield cores
    finally:
        set_attention_recording(model, False)
        model.zero_grad(set_to_none=True)


def resolve_target(name: str, classes: Sequence[str]) -> int:
    """Class index for a name (case-insensitive; dataset spellings such as Happy/Happiness merged)."""
    from ..classes import canonical_class_name

    wanted = canonical_class_name(name)
    for i, c in enumerate(classes):
        if canonical_class_name(c) == wanted:
            return i
    raise ValueError(f"unknown class {name!r}; the model's classes are {', '.join(map(str, classes))}")


def relevance_maps(model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | None = None) -> dict[str, Any]:
    """Per-stream relevance maps for a batch of model inputs (B, 3, S, S).

    ``target`` is the class to explain (one index for all, one per sample, or ``None`` for the predicted
    class, after the model's calibration). Returns ``logits`` (raw) and ``probs`` (calibrated, as every inference
path reports them) ((B, C) arrays), ``target`` (B,), ``image`` and ``landmark``
    ((B, h, w) float arrays in [0, 1], or ``None`` for a stream the model does not have) and
    ``image_method`` / ``landmark_method`` (one-line descriptions). Samples are independent (eval mode).
    """
    family = getattr(model, "family", None)
    if family not in ("poster_v1", "poster_v2"):
        raise ValueError(f"relevance maps support the poster_v1 and poster_v2 families, not {family!r}")
    was_training = model.training
    model.eval()
    # The graph starts at the backbones' outputs (made leaves) and holds no weights, so the backward pass
    # computes only activation gradients after the backbones: a fraction of a training step's cost.
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in flags:
        p.requires_grad_(False)
    leaves: dict[str, Any] = {}

    def make_leaves(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> Any:
            if isinstance(out, torch.Tensor):
                leaves[name] = out.detach().requires_grad_(True)
            else:
                leaves[name] = type(out)(t.detach().requires_grad_(True) for t in out)
            return leaves[name]
        return hook

    hooks = [m.register_forward_hook(make_leaves(n)) for n, m in model.named_children()
             if n in ("ir_back", "face_back", "face_landback")]
    try:
        with _recording(model), torch.enable_grad():
            logits = model(x.detach())
            b = logits.shape[0]
            # What every inference path shows: the model's calibration (class-prior bias, temperature) applied.
            shown = torch.from_numpy(calibrate_logits(logits.detach().float().cpu().numpy(),
                                                      get_temperature(model), get_logit_bias(model)))
            if target is None:
                tgt = shown.argmax(dim=1).to(logits.device)
            else:
                tgt = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1).expand(b)
                if int(tgt.min()) < 0 or int(tgt.max()) >= logits.shape[1]:
                    raise ValueError(f"target class out of range [0, {logits.shape[1]})")
            logits.gather(1, tgt[:, None]).sum().backward()
            maps = _v1_maps(model, leaves.get("ir_back")) if family == "poster_v1" else _v2_maps(model)
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    maps.update({
        "logits": logits.detach().float().cpu().numpy(),
        "probs": shown.softmax(dim=1).numpy(),
        "target": tgt.cpu().numpy(),
    })
    return maps


def _v1_maps(model: nn.Module, ir_map: torch.Tensor | None) -> dict[str, Any]:
    fuse = model.pyramid_fuse
    levels = [n for n in ("block_l", "block_m", "block_s") if hasattr(fuse.blocks[0], n)]
    cross = model.cfg.fusion == "cross"
    img_rel: torch.Tensor | None = None
    lm_rel: torch.Tensor | None = None
    for level in levels:
        blocks = [getattr(pb, level) for pb in fuse.blocks]
        if cross:
            r_img = _rollout([gradient_weighted_attention(b.attn_img.core) for b in blocks])[:, 0, 1:50]
            r_lm = _rollout([gradient_weighted_attention(b.attn_lm.core) for b in blocks])[:, 0, 1:50]
        else:
            r = _rollout([gradient_weighted_attention(b.attn.core) for b in blocks])[:, 0]
            if model.use_image and model.use_landmark:
                r_img, r_lm = r[:, 1:50], r[:, 51:100]
            elif model.use_image:
                r_img, r_lm = r[:, 1:50], None
            else:
                r_img, r_lm = None, r[:, 1:50]
        if r_img is not None:
            img_rel = r_img if img_rel is None else img_rel + r_img
        if r_lm is not None:
            lm_rel = r_lm if lm_rel is None else lm_rel + r_lm
    out: dict[str, Any] = {"image": None, "landmark": None, "image_method": None, "landmark_method": None}
    if img_rel is not None:
        b = img_rel.shape[0]
        if model.cfg.image_tokens == "view":
            act = ir_map  # the IR map (B, C, H, W), a leaf holding its gradient
            contrib = (act.grad * act).detach().clamp(min=0).reshape(b, 49, -1)
            share = contrib / contrib.sum(dim=-1, keepdim=True).clamp(min=1e-30)
            spatial = (img_rel[:, :, None] * share).reshape(act.shape).sum(dim=1)  # (B, H, W)
            out["image"], out["image_method"] = _normalise(spatial), METHOD_NOTES["v1_image_view"]
        else:
            out["image"], out["image_method"] = _normalise(img_rel.reshape(b, 7, 7)), METHOD_NOTES["v1_image_pool"]
    if lm_rel is not None:
        out["landmark"] = _normalise(lm_rel.reshape(lm_rel.shape[0], 7, 7))
        out["landmark_method"] = METHOD_NOTES["v1_landmark"]
    return out


def _v2_maps(model: nn.Module) -> dict[str, Any]:
    r = _rollout([gradient_weighted_attention(blk.attn.core) for blk in model.VIT.blocks])[:, 0, 1:]
    b = r.shape[0]
    g = int(round((r.shape[1] / 3) ** 0.5))
    tokens = r.reshape(b, 3, g, g)
    img_maps, lm_maps, sides = [], [], []
    for k in range(3):
        a = gradient_weighted_attention(getattr(model, f"attn{k + 1}").core)  # (B, N, N) over the k-th map
        side = int(round(a.shape[-1] ** 0.5))
        u = _mass_resize(tokens[:, k], side).reshape(b, 1, side * side)
        img_maps.append((u + u @ a).reshape(b, side, side))
        lm_maps.append(a.sum(dim=-1).reshape(b, side, side))
        sides.append(side)
    fine = max(sides)
    image = sum(_mass_resize(m, fine) for m in img_maps)
    landmark = sum(_mass_resize(m, fine) for m in lm_maps)
    return {"image": _normalise(image), "landmark": _normalise(landmark),
            "image_method": METHOD_NOTES["v2_image"], "landmark_method": METHOD_NOTES["v2_landmark"]}


def overlay(crop: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] map, resized bilinearly to the crop, over an RGB uint8 crop with the jet colour map."""
    import cv2
    from matplotlib import colormaps

    h, w = crop.shape[:2]
    up = cv2.resize(np.asarray(heat, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR).clip(0, 1)
    colour = colormaps["jet"](up)[..., :3]
    base = crop.astype(np.float32) / 255.0
    return ((1 - alpha) * base + alpha * colour).clip(0, 1)


def explain_figure(
    crop: np.ndarray,
    maps: dict[str, Any],
    index: int,
    classes: Sequence[str],
    out_path: str | Path,
    title: str | None = None,
) -> Path:
    """Fig.-7-style panel: crop | image-stream map | landmark-stream map, titled with the prediction."""
    from .plots import new_figure, save_figure

    probs = maps["probs"][index]
    pred, tgt = int(np.argmax(probs)), int(maps["target"][index])
    panels: list[tuple[str, np.ndarray]] = [("face crop", crop.astype(np.float32) / 255.0)]
    for stream in ("image", "landmark"):
        if maps.get(stream) is not None:
            m = maps[stream][index]
            note = maps[f"{stream}_method"]
            panels.append((f"{stream} stream ({m.shape[0]}x{m.shape[1]})\n{_wrap(note, 34)}", overlay(crop, m)))
    fig = new_figure(3.2 * len(panels), 4.4)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (name, img) in zip(axes, panels, strict=True):
        ax.imshow(img)
        ax.set_title(name, fontsize=7)
        ax.axis("off")
    head = f"predicted {classes[pred]} ({100 * probs[pred]:.1f}%)"
    if tgt != pred:
        head += f" · maps for {classes[tgt]} ({100 * probs[tgt]:.1f}%)"
    fig.suptitle(f"{title}\n{head}" if title else head, fontsize=9)
    return save_figure(fig, out_path)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))
