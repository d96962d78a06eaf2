"""Inference fast paths: rewrites of a trained model that compute the same function faster.

Every path here is either *exact* (the same function; outputs differ from eager only by float rounding,
relative error well under 1e-4) or *reduced precision* (documented as such, judged by top-1 agreement):

===========================  =========  =====================================================================
path                         kind       what and why
===========================  =========  =====================================================================
``fused_attention``          exact      ``scaled_dot_product_attention`` instead of an explicit softmax matrix.
``fold_bn``                  exact      eval-mode BatchNorm that *follows* a conv is folded into that conv's
                                        weights and bias (IR stem, IR ``res_layer`` tail, IR projection
                                        shortcuts, every MobileFaceNet conv). The IR units' *leading* BN sits
                                        before a zero-padded 3x3 conv: folding it would change border pixels
                                        (the padding would see ``beta - mean*gamma/std`` instead of 0), so it
                                        is left alone.
``simplify``                 exact      the IR identity shortcut ``MaxPool2d(1, s)`` becomes a strided view
                                        (at stride 1 it copied the map for nothing); the per-block token
                                        ``Conv1d(N, N, 1)`` becomes one batched matmul (no im2col copy).
``resize_once``              exact      the official forward resizes 224 -> 112 (nearest) separately for each
                                        backbone; nearest at an integer factor is a strided slice, so it is
                                        taken once and shared.
``channels_last``            exact      NHWC activations: oneDNN/cuDNN convolutions run without layout
                                        reorders.
``precision="bf16"``         reduced    bfloat16 autocast (8-bit mantissa). Fast on GPUs and on CPUs with
                                        bf16 matrix instructions (AVX512-BF16/AMX); on AVX2-only CPUs PyTorch
                                        emulates it and it is *slower* than fp32.
``cast=True``                 reduced    with bf16/fp16: weights and activations stored in that dtype instead of
                                        autocasting (no per-call weight casts, half the activation traffic;
                                        LayerNorm/softmax kernels still accumulate in fp32).
``compile``                  exact*     ``torch.compile`` (Inductor). Same function; kernels may reorder float
                                        sums. Optional, guarded: a failure falls back to eager with a warning.
``cuda_graphs``              exact      CUDA only: the forward pass is captured once per input shape and
                                        replayed, removing per-kernel launch and Python overhead (what limits
                                        small batches on a fast GPU). Elsewhere it is ignored with a warning.
===========================  =========  =====================================================================

The landmark network's 136-d regression head, which the official code computes and throws away, is never built
by poster-fer models (nothing to do here). :func:`optimize_for_inference` combines the paths; it copies the model
unless ``inplace=True``, so the original stays available for comparison.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .models import set_fused_attention
from .naming import warn_deprecated
from .precision import autocast, resolve_precision

__all__ = ["FastPaths", "InferenceModel", "PointwiseConv1d", "Subsample", "fold_batchnorm",
           "optimize_for_inference", "resize_once", "simplify_trivial_layers", "to_channels_last"]

#: Precisions the fast paths accept (dtypes come from :func:`poster_fer.precision.resolve_precision`).
_PRECISIONS = ("fp32", "bf16", "fp16")


# --- BatchNorm folding -------------------------------------------------------------------------------------------

def _fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv computing ``bn(conv(x))`` with ``bn`` frozen (eval mode).

    The arithmetic is PyTorch's ``fuse_conv_bn_weights``; its inputs are promoted to float64 (and the result cast
    back) so the fold adds no rounding of its own. ``fuse_conv_bn_eval`` is not used because it folds in the
    conv's own dtype and deep-copies the conv (hooks included) instead of building a plain one.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")

    def f64(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().double()

    weight, bias = fuse_conv_bn_weights(conv.weight.detach().double(), f64(conv.bias),
                                        bn.running_mean.detach().double(), bn.running_var.detach().double(),
                                        bn.eps, f64(bn.weight), f64(bn.bias))
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight.to(conv.weight.dtype))
        fused.bias.copy_(bias.to(conv.weight.dtype))
    fused.requires_grad_(conv.weight.requires_grad)
    return fused


def _is_pair(a: nn.Module, b: nn.Module) -> bool:
    return (type(a) is nn.Conv2d and type(b) is nn.BatchNorm2d and b.track_running_stats
            and a.out_channels == b.num_features)


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """Fold every eval-mode ``conv -> BN`` pair of ``model`` in place; returns ``(model, pairs folded)``.

    Pairs are found structurally, never by guessing from names: consecutive ``Conv2d, BatchNorm2d`` entries of an
    ``nn.Sequential`` (IR stem, ``res_layer`` tail, projection shortcuts), and modules whose forward is
    ``bn(conv(x))`` by construction (MobileFaceNet ``ConvBlock``/``LinearBlock``). A BN placed *before* a conv is
    not folded (not exact at zero-padded borders). Only valid for inference: the folded model has no BN to train.
    """
    from .models.mobilefacenet import ConvBlock, LinearBlock

    if any(isinstance(m, nn.BatchNorm2d) and m.training for m in model.modules()):
        raise ValueError("fold_batchnorm needs the model in eval mode (training BatchNorm uses batch statistics)")
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, (ConvBlock, LinearBlock)) and _is_pair(module.conv, module.bn):
            module.conv = _fold_conv_bn(module.conv, module.bn)
            module.bn = nn.Identity()
            folded += 1
        elif type(module) is nn.Sequential:
            names = list(module._modules)
            for name_a, name_b in zip(names, names[1:], strict=False):
                a, b = module._modules[name_a], module._modules[name_b]
                if _is_pair(a, b):
                    module._modules[name_a] = _fold_conv_bn(a, b)
                    module._modules[name_b] = nn.Identity()
                    folded += 1
    return model, folded


# --- trivial-kernel layers ---------------------------------------------------------------------------------------

class Subsample(nn.Module):
    """``MaxPool2d(kernel_size=1, stride=s)``: the max over one pixel is that pixel, so it is a strided view.

    The IR units' identity shortcut is such a pool; at stride 1 it copies the whole map for nothing.
    """

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]


class PointwiseConv1d(nn.Module):
    """``Conv1d(N, N, 1)`` over tokens as one batched matmul (the conv path would im2col-copy its input)."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach()[:, :, 0].clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach()[:, None].clone(),
                                                                requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.matmul(self.weight, x)  # (N, N) @ (B, N, d) -> (B, N, d)
        return out if self.bias is None else out + self.bias


def _pair(v: Any) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _is_unit_pool(m: nn.Module) -> bool:
    if type(m) is not nn.MaxPool2d:
        return False
    stride = _pair(m.stride)
    return (_pair(m.kernel_size) == (1, 1) and _pair(m.padding) == (0, 0) and _pair(m.dilation) == (1, 1)
            and stride[0] == stride[1])


def simplify_trivial_layers(model: nn.Module) -> tuple[nn.Module, int]:
    """Replace 1x1 max-pools by strided views and pointwise token ``Conv1d`` by matmuls, in place (exact)."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if _is_unit_pool(child):
                parent._modules[name] = Subsample(_pair(child.stride)[0])
                replaced += 1
            elif (type(child) is nn.Conv1d and child.kernel_size == (1,) and child.stride == (1,)
                  and child.padding == (0,) and child.dilation == (1,) and child.groups == 1
                  and child.padding_mode == "zeros"):
                parent._modules[name] = PointwiseConv1d(child)
                replaced += 1
    return model, replaced


# --- memory format, precision -------------------------------------------------------------------------------------

def to_channels_last(model: nn.Module) -> nn.Module:
    """Store 4-D weights NHWC so convolutions on NHWC inputs need no reorder (exact: only memory layout)."""
    return model.to(memory_format=torch.channels_last)


def resize_once(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input both backbones see, resized once (the model's own resize then finds nothing to do).

    Nearest resizing by an integer factor picks pixels ``0, f, 2f, ...``, which is a strided slice: no
    interpolation kernel runs. Returns ``x`` unchanged when the streams need different sizes.
    """
    cfg = model.cfg
    size = int(cfg.backbone_size)
    lm_size = getattr(cfg, "landmark_size", None)
    if lm_size not in (None, size) and getattr(model, "use_landmark", True) and getattr(model, "use_image", True):
        return x
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    mode = getattr(cfg, "resize_mode", "nearest")
    if mode == "nearest" and h == w and h % size == 0:
        f = h // size
        return x[:, :, ::f, ::f]
    return F.interpolate(x, size=size, mode=mode)


# --- the combined wrapper ---------------------------------------------------------------------------------------

class InferenceModel(nn.Module):
    """An eval-only wrapper running ``model`` through the chosen fast paths; ``forward(x) -> float32 logits``.

    Attribute access falls through to the wrapped model (``cfg``, ``meta``, ``model_name``, ...).
    ``paths`` lists what was applied; ``exact`` says whether all of it is exact.
    """

    def __init__(self, model: nn.Module, precision: str = "fp32", channels_last: bool = False,
                 resize: bool = True, paths: tuple[str, ...] = (), cast: bool = False,
                 cuda_graphs: bool = False) -> None:
        super().__init__()
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, not {precision!r}")
        if cast and precision == "fp32":
            raise ValueError("cast=True needs precision 'bf16' or 'fp16'")
        self.model = model
        self.precision = precision
        self.channels_last = channels_last
        self.resize = resize
        self.cast = cast
        self.cuda_graphs = cuda_graphs
        self.paths = tuple(paths)
        self.compiled: Any = None
        self._graphs: dict[tuple, tuple[Any, torch.Tensor, torch.Tensor]] = {}

    @property
    def exact(self) -> bool:
        return self.precision == "fp32"

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def train(self, mode: bool = True) -> InferenceModel:
        if mode:
            raise RuntimeError("an InferenceModel is for inference only (BatchNorm may be folded away)")
        return super().train(False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize:
            x = resize_once(self.model, x)
        if self.cast:
            x = x.to(resolve_precision(self.precision, x.device))
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.cast:  # the weights are already in the low-precision dtype: nothing to autocast
            return self.model(self.prepare(x)).float()
        with autocast(x.device, resolve_precision(self.precision, x.device))():
            return self.model(self.prepare(x)).float()

    def _replay(self, fn: Any, x: torch.Tensor) -> torch.Tensor:
        """Run ``fn(x)`` through a CUDA graph captured for ``x``'s shape (captured on first use)."""
        key = (tuple(x.shape), x.dtype, str(x.device))
        entry = self._graphs.get(key)
        if entry is None:
            static_x = x.clone()
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):  # warm-up outside the graph: autotuning, lazy allocations
                for _ in range(2):
                    fn(static_x)
            torch.cuda.current_stream(x.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = fn(static_x)
            entry = self._graphs[key] = (graph, static_x, static_out)
        graph, static_x, static_out = entry
        static_x.copy_(x)
        graph.replay()
        return static_out.clone()

    def _dispatch(self, x: torch.Tensor) -> torch.Tensor:
        fn = self.compiled if self.compiled is not None else self._run
        if self.cuda_graphs:
            if x.device.type == "cuda":
                return self._replay(fn, x)
            warnings.warn("cuda_graphs only applies to CUDA inputs; running without graphs", stacklevel=3)
            self.cuda_graphs = False
            self.paths = tuple(p for p in self.paths if p != "cuda_graphs")
        return fn(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self._dispatch(x)
        try:
            return self._dispatch(x)
        except Exception as err:  # noqa: BLE001  (compilation is lazy: any backend failure shows up here)
            warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); falling back to eager",
                          stacklevel=2)
            self.compiled = None
            self._graphs.clear()
            self.paths = tuple(p for p in self.paths if p != "compile")
            return self._dispatch(x)


@dataclass(frozen=True)
class FastPaths:
    """Which of :func:`optimize_for_inference`'s paths to take besides ``precision`` and ``compile``.

    Attributes:
        channels_last: NHWC convolutions; default (None) on (it pays off with oneDNN and cuDNN alike).
        fold_bn: fold conv->BN pairs (exact in eval mode).
        fused_attention: scaled_dot_product_attention.
        resize: resize the input once for both backbones.
        simplify: 1x1 max-pools as strided views, pointwise token convs as matmuls (exact).
        inplace: modify ``model`` itself instead of a deep copy.
        compile_options: keyword arguments for ``torch.compile`` (e.g. ``{"mode": "max-autotune"}``).
        cast: with ``precision`` bf16/fp16, convert weights and activations to that dtype instead of autocasting.
        cuda_graphs: capture and replay the forward pass per input shape (CUDA inputs only).
    """

    channels_last: bool | None = None
    fold_bn: bool = True
    fused_attention: bool = True
    resize: bool = True
    simplify: bool = True
    inplace: bool = False
    compile_options: dict[str, Any] | None = None
    cast: bool = False
    cuda_graphs: bool = False


def optimize_for_inference(
    model: nn.Module,
    precision: str = "fp32",
    compile: bool = False,
    *args: Any,
    options: FastPaths | None = None,
    **legacy: Any,
) -> InferenceModel:
    """Apply the fast paths to a trained model and return an :class:`InferenceModel` (eval mode).

    Args:
        model: a poster-fer model (v1 or v2 family).
        precision: ``"fp32"`` (exact), ``"bf16"`` or ``"fp16"`` (autocast, reduced precision).
        compile: wrap the forward in ``torch.compile``; a compile failure warns and keeps eager.
        options: the other paths (:class:`FastPaths`). Its fields as keywords or by position (the form before
            it) still work, with a DeprecationWarning.
    """
    opts = _fast_paths(options, args, legacy)
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, not {precision!r}")
    if not opts.inplace:
        model = copy.deepcopy(model)
    model.eval()
    applied = _exact_paths(model, opts)
    if opts.cast:
        if precision == "fp32":
            raise ValueError("cast=True needs precision 'bf16' or 'fp16'")
        model.to(resolve_precision(precision, "cpu"))
        applied.append(f"cast_{precision}")
    elif precision != "fp32":
        applied.append(f"autocast_{precision}")
    if opts.cuda_graphs:
        applied.append("cuda_graphs")
    channels_last = True if opts.channels_last is None else opts.channels_last
    wrapped = InferenceModel(model, precision=precision, channels_last=channels_last, resize=opts.resize,
                             paths=tuple(applied), cast=opts.cast, cuda_graphs=opts.cuda_graphs).eval()
    if compile:
        try:
            wrapped.compiled = torch.compile(wrapped._run, **(opts.compile_options or {}))
            wrapped.paths = wrapped.paths + ("compile",)
        except Exception as err:  # noqa: BLE001  (any backend failure: keep the eager path)
            warnings.warn(f"torch.compile unavailable ({err}); running eager", stacklevel=2)
    return wrapped


def _exact_paths(model: nn.Module, opts: FastPaths) -> list[str]:
    """Apply the exact rewrites ``opts`` asks for to ``model`` in place; returns what was applied, in order."""
    applied: list[str] = []
    if opts.fused_attention:
        set_fused_attention(model, True)
        applied.append("fused_attention")
    if opts.simplify:
        _, n = simplify_trivial_layers(model)
        if n:
            applied.append(f"simplify({n})")
    if opts.fold_bn:
        with torch.no_grad():
            _, n = fold_batchnorm(model)
        if n:
            applied.append(f"fold_bn({n})")
    if opts.channels_last is None or opts.channels_last:
        to_channels_last(model)
        applied.append("channels_last")
    if opts.resize:
        applied.append("resize_once")
    return applied


#: optimize_for_inference's settings after ``compile`` in their old positional order, before :class:`FastPaths`.
_POSITIONAL = ("channels_last", "fold_bn", "fused_attention", "resize", "simplify", "inplace", "compile_options",
               "cast", "cuda_graphs")


def _fast_paths(options: FastPaths | None, args: tuple[Any, ...], legacy: dict[str, Any]) -> FastPaths:
    """``options`` with the old keywords (and positional settings) over it, with a DeprecationWarning naming
    :class:`FastPaths`; an unknown keyword is a TypeError, as it was."""
    if len(args) > len(_POSITIONAL):
        raise TypeError(f"optimize_for_inference() takes at most {len(_POSITIONAL) + 3} positional arguments")
    by_position = dict(zip(_POSITIONAL, args, strict=False))
    twice = sorted(set(by_position) & set(legacy))
    unknown = sorted(set(legacy) - set(_POSITIONAL))
    if twice or unknown:
        raise TypeError(f"optimize_for_inference() got multiple values for {twice}" if twice else
                        f"optimize_for_inference() got unexpected keyword argument(s) {unknown}")
    settings = {**by_position, **legacy}
    if not settings:
        return options or FastPaths()
    warn_deprecated(f"optimize_for_inference(..., {', '.join(f'{k}=' for k in settings)}) is deprecated: pass "
                    "options=FastPaths(...) (poster_fer.fastpath)")
    return replace(options or FastPaths(), **settings)
