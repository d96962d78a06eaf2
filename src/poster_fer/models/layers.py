"""Layers shared by the model families: MLP, drop path, attention, SE gating, the classification head.

Names of submodules follow the official POSTER code so that state_dict keys match its checkpoints.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=32)
def _pool_weights(h: int, w: int, m: int) -> np.ndarray:
    """(h*w, m*m) averaging weights of adaptive average pooling from (h, w) to (m, m): output row i averages
    input rows ``[floor(i * h / m), ceil((i + 1) * h / m))`` (PyTorch's definition), columns likewise."""

    def axis(n: int) -> np.ndarray:
        a = np.zeros((m, n), dtype=np.float64)
        for i in range(m):
            lo, hi = (i * n) // m, -((-(i + 1) * n) // m)
            a[i, lo:hi] = 1.0 / (hi - lo)
        return a

    return np.kron(axis(h), axis(w)).T.astype(np.float32)


def adaptive_avg_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` that also exports to ONNX when the map does not divide evenly.

    Why: the CPU-sized models pool a 6x6 (image) or 5x5 (landmark) map up to POSTER's 7x7 token grid, which the
    ONNX exporter refuses; as two small matrix products the same numbers export (equal to ~1e-7). An even
    division is a plain average pool with a fixed kernel: the exporter cannot turn ``adaptive_avg_pool2d`` into
    one when the traced map's size is symbolic, as it is after a resize (the face-backbone image streams).
    """
    h, w = x.shape[-2:]
    if h % size == 0 and w % size == 0:
        kernel = (int(h) // size, int(w) // size)
        return F.avg_pool2d(x, kernel, kernel)
    # One constant (H*W, size*size) matrix on the right of the flattened map: a plain 2-D MatMul when exported.
    k = torch.from_numpy(_pool_weights(int(h), int(w), size)).to(device=x.device, dtype=x.dtype)
    b, c = x.shape[:2]
    return torch.matmul(x.reshape(b, c, h * w), k).reshape(b, c, size, size)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or when ``p == 0``)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Two-layer perceptron with GELU (``fc1``/``fc2`` as in the official checkpoints)."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C // heads)."""
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, hd) -> (B, N, heads * hd)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class AttentionCore(nn.Module):
    """softmax(q k^T * scale + bias) v on head-split tensors.

    The explicit path materialises the attention matrix, which the official code does, relevance maps need
    (``record=True`` keeps it and its gradient), and parity is measured on. ``fused=True`` switches to
    ``scaled_dot_product_attention`` for speed; it computes the same function.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fused = False
        self.record = False
        self.attn: torch.Tensor | None = None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        scale = q.shape[-1] ** -0.5
        if self.fused and not self.record:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
        attn = (q * scale) @ k.transpose(-2, -1)
        if bias is not None:
            attn = attn + bias
        attn = attn.softmax(dim=-1)
        if self.record:
            if attn.requires_grad:
                attn.retain_grad()
            self.attn = attn
        return attn @ v


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (ViT layout)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.core = AttentionCore()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(merge_heads(self.core(qkv[0], qkv[1], qkv[2])))


class CrossAttention(nn.Module):
    """Attention whose queries come from the other stream.

    The official code computes keys and values with ``kv`` and uses the other stream's normed tokens as
    queries directly; ``query_projection=True`` adds the paper's W_Q (Eq. 5-6) as a separate ``q`` layer.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, query_projection: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.q = nn.Linear(dim, dim, bias=qkv_bias) if query_projection else None
        self.core = AttentionCore()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        kv = self.kv(x).reshape(b, n, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.q is not None:
            query = self.q(query)
        q = split_heads(query, self.heads)
        return self.proj(merge_heads(self.core(q, kv[0], kv[1])))


class SEBlock(nn.Module):
    """Squeeze-excitation gate on a pooled feature vector (``linear1``/``linear2`` as in the checkpoints)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, dim)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Linear(dim, dim)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.linear2(self.relu(self.linear1(x))))


class ClassificationHead(nn.Module):
    """A single linear layer, wrapped so its keys read ``head.linear.*`` like the official checkpoints."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class ViTBlock(nn.Module):
    """Pre-norm transformer encoder block (self-attention + MLP), the 'vanilla' block of the baselines."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def set_fused_attention(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every attention core in ``model`` to (or from) ``scaled_dot_product_attention``."""
    for m in model.modules():
        if isinstance(m, AttentionCore):
            m.fused = enabled
    return model


def set_attention_recording(model: nn.Module, enabled: bool = True) -> list[AttentionCore]:
    """Make every attention core keep its attention matrix (and gradient) for relevance maps."""
    cores = [m for m in model.modules() if isinstance(m, AttentionCore)]
    for m in cores:
        m.record = enabled
        m.attn = None
    return cores


def check_tap(network: str, last: str, taps: tuple[str, ...], with_head: bool) -> None:
    """Validate a truncated backbone's last feature map (``taps`` in network order; the head needs the last)."""
    if last not in taps:
        raise ValueError(f"{network}: unknown feature map {last!r} (choose from {', '.join(taps)})")
    if with_head and last != taps[-1]:
        raise ValueError(f"the embedding head needs the whole network (last={taps[-1]!r})")
