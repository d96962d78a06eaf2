"""Registry-wide model behaviour: shapes, finiteness, gradients, frozen landmark stream, determinism."""

from __future__ import annotations

import pytest
import torch

import poster_fer
from poster_fer import create_model, list_models
from poster_fer.models import model_family

ALL = list_models()
SMALL = [n for n in ALL if "tiny" in n]


def no_drop(name: str) -> dict:
    """Overrides that disable stochastic depth, so gradient checks cannot flake."""
    if model_family(name) == "poster_v2":
        return {"ffn_drop_path": (0.0, 0.0, 0.0), "vit_drop_path": 0.0}
    return {"drop_path": 0.0}


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))


def test_registry_names():
    for required in ("poster_v1", "poster_v1_affectnet", "poster_v1_landmark_only", "poster_v1_image_only",
                     "poster_v1_baseline", "poster_v1_baseline_pyramid", "poster_v1_baseline_crossfusion",
                     "poster_v2", "poster_v1_tiny", "poster_v2_tiny"):
        assert required in ALL
    with pytest.raises(KeyError, match="unknown model"):
        create_model("poster_v9")
    with pytest.raises(TypeError, match="no field"):
        create_model("poster_v1_tiny", not_a_field=1)


@pytest.mark.parametrize("name", ALL)
def test_forward_shapes(name, batch):
    model = create_model(name, num_classes=5).eval()
    with torch.no_grad():
        feats = model.forward_features(batch[:1])
        logits = model.forward_head(feats)
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()
    assert feats.shape == (1, model.num_features) and torch.isfinite(feats).all()


def unreachable_parameters(model) -> set[str]:
    """Parameters that by construction cannot affect the output.

    Without the per-block token conv (the official AffectNet variant), the last pyramid block's full-width
    landmark branch never reaches the image class token that is classified: nothing after it mixes tokens.
    """
    cfg = model.cfg
    if getattr(cfg, "fusion", None) != "cross" or cfg.token_conv:
        return set()
    last = f"pyramid_fuse.blocks.{cfg.depth - 1}.block_l."
    return {last + n for n, _ in model.pyramid_fuse.blocks[-1].block_l.named_parameters()
            if n.split(".")[0] in ("norm3", "attn_lm", "norm4", "mlp2")}


@pytest.mark.parametrize("name", ALL)
def test_gradients(name, batch):
    """Every trainable parameter gets a gradient; the frozen landmark network gets none."""
    torch.manual_seed(0)
    shallow = {"depth": 2} if model_family(name) == "poster_v1" and "tiny" not in name else {}
    model = create_model(name, num_classes=5, **shallow, **no_drop(name)).train()
    model(batch).square().sum().backward()
    frozen = {id(p) for p in model.face_landback.parameters()} if hasattr(model, "face_landback") else set()
    no_grad = {n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)}
    assert no_grad == unreachable_parameters(model), f"without gradient: {sorted(no_grad)[:5]}"
    for n, p in model.named_parameters():
        if id(p) in frozen:
            assert not p.requires_grad and p.grad is None, n


@pytest.mark.parametrize("name", ["poster_v1_tiny", "poster_v2_tiny", "poster_v1_baseline_pyramid"])
def test_landmark_backbone_frozen_in_train_mode(name, batch):
    model = create_model(name)
    lm = model.face_landback
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    model.train()
    assert model.training and not lm.training
    model(batch)
    for k, v in lm.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed in train mode"
    # The official behaviour is still available, and then BN statistics do drift.
    official = create_model(name, landmark_train_mode=True).train()
    assert official.face_landback.training
    ref = official.face_landback.conv1.bn.running_mean.clone()
    official(batch)
    assert not torch.equal(official.face_landback.conv1.bn.running_mean, ref)


@pytest.mark.parametrize("name", SMALL)
def test_eval_determinism_and_batch_independence(name, batch):
    model = create_model(name).eval()
    with torch.no_grad():
        a, b = model(batch), model(batch)
        single = model(batch[:1])
    assert torch.equal(a, b)
    torch.testing.assert_close(single, a[:1], rtol=1e-4, atol=1e-5)


def test_resize_224_matches_official_nearest(batch):
    """A 224 input is resized (nearest) to 112, so it equals feeding its even pixels."""
    model = create_model("poster_v1_tiny").eval()
    big = batch.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # (2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(big), model(batch))


def test_precomputed_landmark_tokens_match(batch):
    model = create_model("poster_v1_tiny").eval()
    with torch.no_grad():
        lm = model.landmark_features(batch)
        torch.testing.assert_close(model(batch, landmark_tokens=lm), model(batch))
    v2 = create_model("poster_v2_tiny").eval()
    with torch.no_grad():
        torch.testing.assert_close(v2(batch, landmark_maps=v2.landmark_features(batch)), v2(batch))


def test_variant_structure():
    """Table-4 variants differ in the parts the paper ablates, built from one set of blocks."""
    from poster_fer.models.layers import ViTBlock
    from poster_fer.models.poster import CrossFusionBlock

    def kinds(m):
        blk = m.pyramid_fuse.blocks[0]
        return {type(getattr(blk, n)).__name__ for n in ("block_l", "block_m", "block_s") if hasattr(blk, n)}

    small = {"depth": 1}
    assert kinds(create_model("poster_v1", **small)) == {CrossFusionBlock.__name__}
    assert kinds(create_model("poster_v1_baseline", **small)) == {ViTBlock.__name__}
    pyr = create_model("poster_v1_baseline_pyramid", **small).pyramid_fuse.blocks[0]
    assert pyr.levels == 3 and isinstance(pyr.block_s, ViTBlock)
    assert create_model("poster_v1_baseline_crossfusion", **small).pyramid_fuse.blocks[0].levels == 1
    assert not hasattr(create_model("poster_v1_image_only", **small), "face_landback")
    assert not hasattr(create_model("poster_v1_landmark_only", **small), "ir_back")
    assert create_model("poster_v1_affectnet", **small).pyramid_fuse.blocks[0].block_l.conv is None
    qp = create_model("poster_v1", query_projection=True, **small)
    assert qp.pyramid_fuse.blocks[0].block_l.attn_img.q is not None


def test_bad_configs():
    with pytest.raises(ValueError, match="cross-fusion needs both streams"):
        create_model("poster_v1_tiny", streams="image", fusion="cross")
    with pytest.raises(ValueError, match="halve"):
        create_model("poster_v1_tiny", dims=(64, 48, 16))
    with pytest.raises(ValueError, match="49 tokens"):
        create_model("poster_v1_tiny", backbone_size=48)
    with pytest.raises(ValueError, match="widths"):
        create_model("poster_v2_tiny", ir={"units": [1, 1, 1], "widths": [32, 64, 128], "split_stages": True})


def test_small_ir_and_pool_tokens():
    """CPU-sized variants: a shallower, narrower IR and pooled tokens at low resolution."""
    m = create_model("poster_v1", depth=2, dims=(128, 64, 32), heads=4, image_tokens="pool", backbone_size=56,
                     landmark_size=112, ir={"units": [2, 2, 2], "widths": [32, 64, 128], "stem_width": 32}).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 56, 56)).shape == (1, 7)
        assert m.image_features(torch.randn(1, 3, 56, 56)).shape == (1, 49, 128)


def test_fused_attention_matches_explicit(batch):
    from poster_fer.models import set_fused_attention

    for name in ("poster_v1_tiny", "poster_v2_tiny"):
        model = create_model(name).eval()
        with torch.no_grad():
            ref = model(batch)
            set_fused_attention(model, True)
            torch.testing.assert_close(model(batch), ref, rtol=1e-4, atol=1e-5)


def test_created_models_do_not_share_registered_sub_configs():
    """Variants registered from one kwargs dict (the FER+ face-network models) share an IRConfig object; a model's
    config must be its own, or changing one would change every later model of those variants."""
    a = create_model("poster_v1_ferplus_mfn_image")
    b = create_model("poster_v1_ferplus_mfn64_image")
    c = create_model("poster_v1_ferplus_mfn64_image")
    assert a.cfg.ir == b.cfg.ir and a.cfg.ir is not b.cfg.ir and b.cfg.ir is not c.cfg.ir


def test_the_torch_free_architecture_table_is_the_registry():
    """poster_fer.architectures answers list_models() without PyTorch; every name there is a registered variant
    with that description, and registering a name missing there is refused."""
    from poster_fer.architectures import ARCHITECTURES, RETIRED
    from poster_fer.models import describe_model
    from poster_fer.models import list_models as registered
    from poster_fer.models.registry import aliases, register_model

    assert sorted(ARCHITECTURES) == registered() == poster_fer.list_models()
    assert all(describe_model(n) == d for n, d in ARCHITECTURES.items())
    assert aliases() == RETIRED and set(RETIRED.values()) <= set(ARCHITECTURES)
    with pytest.raises(ValueError, match="poster_fer.architectures"):
        register_model("poster_v1_unlisted", "poster_v1")
