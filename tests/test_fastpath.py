"""Inference fast paths: each exact path computes what the eager model computes; bf16 stays close."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poster_fer import create_model
from poster_fer.fastpath import (
    FastPaths,
    InferenceModel,
    PointwiseConv1d,
    Subsample,
    fold_batchnorm,
    optimize_for_inference,
    resize_once,
    simplify_trivial_layers,
)
from poster_fer.models.ir import IRBackbone, IRConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models, one thread


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine terms, so that folding is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def v1_tiny():
    torch.manual_seed(0)
    return randomize_bn(create_model("poster_v1_tiny", num_classes=5))


@pytest.fixture(scope="module")
def v1_small():
    """A cheaper v1 (both streams at 56 from a 112 input) for the slower paths."""
    torch.manual_seed(0)
    return randomize_bn(create_model("poster_v1_tiny", num_classes=5, input_size=112, backbone_size=56,
                                     landmark_size=56, image_tokens="pool"))


@pytest.fixture(scope="module")
def v2_tiny():
    torch.manual_seed(0)
    return randomize_bn(create_model("poster_v2_tiny", num_classes=5))


@pytest.fixture(scope="module")
def batch():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_fold_batchnorm_is_exact_and_skips_pre_activation_bn():
    ir = randomize_bn(IRBackbone(IRConfig(units=(1, 2), widths=(8, 16), stem_width=8)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = ir(x)
        folded, n = fold_batchnorm(ir)
        out = folded(x)
    # stem + 3 res_layer tails + 1 projection shortcut (8 -> 16); the units' leading BNs stay
    assert n == 5
    assert rel_err(out, ref) <= 1e-5
    for unit in folded.body:
        assert isinstance(unit.res_layer[0], nn.BatchNorm2d)  # BN before a zero-padded conv: not foldable
        assert isinstance(unit.res_layer[4], nn.Identity)
        assert unit.res_layer[3].bias is not None


@pytest.mark.parametrize("conv_bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_fold_batchnorm_with_and_without_conv_bias_and_bn_affine(conv_bias, affine):
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=conv_bias), nn.BatchNorm2d(6, affine=affine))
    with torch.no_grad():
        seq[1].running_mean.copy_(0.3 * torch.randn(6))
        seq[1].running_var.copy_(0.5 + torch.rand(6))
        if affine:
            seq[1].weight.copy_(1 + 0.2 * torch.randn(6))
            seq[1].bias.copy_(0.2 * torch.randn(6))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = seq.eval()(x)
        folded, n = fold_batchnorm(seq)
        out = folded(x)
    assert n == 1 and isinstance(folded[1], nn.Identity) and folded[0].bias is not None
    assert folded[0].weight.dtype == torch.float32 and folded[0].weight.requires_grad
    assert rel_err(out, ref) <= 1e-6


def test_pre_activation_bn_is_not_foldable_at_borders():
    """Why the leading BN stays: folding it into the padded conv changes the border pixels."""
    torch.manual_seed(0)
    bn = randomize_bn(nn.Sequential(nn.BatchNorm2d(4)))[0]
    conv = nn.Conv2d(4, 4, 3, 1, 1, bias=False)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        ref = conv(bn(x))
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        naive = F.conv2d(x, conv.weight * scale[None, :, None, None], (conv.weight * shift[None, :, None, None])
                         .sum((1, 2, 3)), padding=1)
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert rel_err(naive[interior], ref[interior]) <= 1e-5
    assert rel_err(naive, ref) > 1e-3


def test_simplify_replaces_unit_pools_and_token_convs():
    pool = nn.Sequential(nn.MaxPool2d(1, 2), nn.MaxPool2d(1, 1))
    x = torch.randn(2, 3, 9, 9)
    ref = pool(x)
    simplified, n = simplify_trivial_layers(pool)
    assert n == 2 and all(isinstance(m, Subsample) for m in simplified)
    assert torch.equal(simplified(x), ref)

    conv = nn.Conv1d(10, 10, 1)
    tokens = torch.randn(2, 10, 6)
    assert rel_err(PointwiseConv1d(conv)(tokens), conv(tokens)) <= 1e-6
    other = nn.Sequential(nn.Conv1d(10, 10, 2, 2), nn.MaxPool2d(2, 2))
    assert simplify_trivial_layers(other)[1] == 0  # real kernels are left alone


def test_resize_once_matches_interpolate(v1_tiny, batch):
    small = resize_once(v1_tiny, batch)
    assert torch.equal(small, F.interpolate(batch, size=112, mode="nearest"))
    odd = torch.randn(1, 3, 150, 150)
    assert torch.equal(resize_once(v1_tiny, odd), F.interpolate(odd, size=112, mode="nearest"))


PATHS = [
    {"fused_attention": True, "fold_bn": False, "channels_last": False, "resize": False, "simplify": False},
    {"fused_attention": False, "fold_bn": True, "channels_last": False, "resize": False, "simplify": False},
    {"fused_attention": False, "fold_bn": False, "channels_last": True, "resize": False, "simplify": False},
    {"fused_attention": False, "fold_bn": False, "channels_last": False, "resize": True, "simplify": False},
    {"fused_attention": False, "fold_bn": False, "channels_last": False, "resize": False, "simplify": True},
    {},  # everything
]


@pytest.mark.parametrize("family", ["v1", "v2"])
def test_each_exact_path_matches_eager(family, v1_small, v2_tiny, batch):
    model = v1_small if family == "v1" else v2_tiny
    x = batch if family == "v2" else batch[:, :, ::2, ::2].contiguous()
    paths = PATHS if family == "v1" else PATHS[1:2] + PATHS[-1:]  # v2: BN folding and everything
    with torch.no_grad():
        ref = model(x)
        for kw in paths:
            fast = optimize_for_inference(model, options=FastPaths(**kw))
            assert fast.exact
            err = rel_err(fast(x), ref)
            assert err <= 1e-4, (kw, err)
    # the original model was copied, not changed
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, (Subsample, PointwiseConv1d)) for m in model.modules())


def test_optimized_model_reports_paths_and_is_inference_only(v1_tiny):
    fast = optimize_for_inference(v1_tiny)
    assert "fused_attention" in fast.paths and "channels_last" in fast.paths
    assert any(p.startswith("fold_bn(") for p in fast.paths)
    assert fast.cfg is v1_tiny.cfg or fast.cfg == v1_tiny.cfg  # attribute access falls through
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()
    with pytest.raises(ValueError, match="precision"):
        optimize_for_inference(v1_tiny, precision="int3")


def test_bf16_path_is_close_and_agrees(v1_small):
    x = torch.randn(6, 3, 112, 112, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = v1_small(x)
        fast = optimize_for_inference(v1_small, precision="bf16")
        out = fast(x)
    assert not fast.exact
    assert out.dtype == torch.float32
    assert rel_err(out, ref) <= 0.05  # bf16 keeps ~3 significant digits
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 5 / 6


def test_compile_failure_falls_back_to_eager(v1_tiny, batch, monkeypatch):
    def broken_compile(fn, **kwargs):
        def run(x):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    fast = optimize_for_inference(v1_tiny, compile=True)
    assert "compile" in fast.paths
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fast(batch[:1])
    assert any("falling back to eager" in str(w.message) for w in caught)
    assert "compile" not in fast.paths and fast.compiled is None
    assert rel_err(out, v1_tiny(batch[:1]).detach()) <= 1e-4
    assert isinstance(fast, InferenceModel)


def test_bf16_cast_path_stores_bf16_and_returns_float32(v1_small):
    x = torch.randn(4, 3, 112, 112, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = v1_small(x)
        fast = optimize_for_inference(v1_small, precision="bf16", options=FastPaths(cast=True))
        out = fast(x)
    assert "cast_bf16" in fast.paths and not fast.exact
    assert all(p.dtype == torch.bfloat16 for p in fast.model.parameters())
    assert out.dtype == torch.float32 and rel_err(out, ref) <= 0.05
    with pytest.raises(ValueError, match="cast=True"):
        optimize_for_inference(v1_small, options=FastPaths(cast=True))


def test_cuda_graphs_without_cuda_warns_and_runs_eager(v1_small):
    fast = optimize_for_inference(v1_small, options=FastPaths(cuda_graphs=True))
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad(), pytest.warns(UserWarning, match="cuda_graphs only applies to CUDA"):
        out = fast(x)
    assert "cuda_graphs" not in fast.paths
    with torch.no_grad():
        assert rel_err(out, v1_small(x)) <= 1e-4


def test_old_keyword_and_positional_forms_still_work_and_warn(v1_tiny, batch):
    """Issue 36: the paths moved into FastPaths; the keywords (and positions) before it still work, warned."""
    x = batch[:1]
    new = optimize_for_inference(v1_tiny, options=FastPaths(fold_bn=False, channels_last=False))
    with pytest.warns(DeprecationWarning, match="options=FastPaths"):
        by_keyword = optimize_for_inference(v1_tiny, fold_bn=False, channels_last=False)
    with pytest.warns(DeprecationWarning, match="channels_last=, fold_bn="):
        by_position = optimize_for_inference(v1_tiny, "fp32", False, False, False)
    assert new.paths == by_keyword.paths == by_position.paths
    assert not any(p.startswith("fold_bn") or p == "channels_last" for p in new.paths)
    with torch.no_grad():
        torch.testing.assert_close(by_keyword(x), new(x), rtol=0, atol=0)
    with pytest.raises(TypeError, match="fold_batchnorm"):
        optimize_for_inference(v1_tiny, fold_batchnorm=False)
    with pytest.raises(TypeError, match="multiple values"):
        optimize_for_inference(v1_tiny, "fp32", False, True, channels_last=True)
