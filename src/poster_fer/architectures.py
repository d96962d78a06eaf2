"""Architecture names and one line each, without PyTorch.

Why a table apart from the registry: ``poster_fer.list_models()`` and ``poster-fer info --list`` must answer in the
light runtime (no PyTorch) and in a tenth of a second, and the registry's families import torch. The description of
an architecture is written here only; :func:`poster_fer.models.registry.register_model` takes it from this table and
refuses a name missing from it, and tests/test_models.py checks every name here is registered.
"""

from __future__ import annotations

from .naming import name_matches

__all__ = ["ARCHITECTURES", "RETIRED", "describe_architecture", "list_architectures"]

#: architecture name -> one-line description
ARCHITECTURES: dict[str, str] = {
    "poster_v1": "POSTER as the official RAF-DB code builds it (Table 4 f)",
    "poster_v1_affectnet": "official AffectNet variant: no per-block token conv",
    "poster_v1_baseline": "Table 4 (c): concatenated tokens, vanilla encoders",
    "poster_v1_baseline_crossfusion": "Table 4 (e): baseline + cross-fusion",
    "poster_v1_baseline_pyramid": "Table 4 (d): baseline + pyramid",
    "poster_v1_dlib": "two-stream POSTER, dlib face-recognition ResNet image stream",
    "poster_v1_image_only": "Table 4 (b): image stream, vanilla encoders",
    "poster_v1_landmark_only": "Table 4 (a): landmark stream, vanilla encoders",
    "poster_v1_mfn": "two-stream POSTER, ArcFace MobileFaceNet image stream at 112 px",
    "poster_v1_mfn64": "two-stream POSTER (cross-fusion, pyramid), ArcFace MobileFaceNet image stream at 64 px",
    "poster_v1_mfn64_baseline": (
        "Table 4 (c) baseline: concatenated tokens, self-attention,"
        " ArcFace MobileFaceNet image stream at 64 px"),
    "poster_v1_mfn64_baseline_pyramid": "Table 4 (d) baseline + pyramid, ArcFace MobileFaceNet image stream at 64 px",
    "poster_v1_mfn64_crossfusion": (
        "Table 4 (e) baseline + cross-fusion, no pyramid,"
        " ArcFace MobileFaceNet image stream at 64 px"),
    "poster_v1_mfn64_image": "image-only POSTER, ArcFace MobileFaceNet image stream at 64 px (the default model's)",
    "poster_v1_mfn_image": "image-only POSTER, ArcFace MobileFaceNet image stream at 112 px",
    "poster_v1_s": "small two-stream POSTER, 48 px IR image stream (configs/ferplus_default)",
    "poster_v1_s_image": "small image-only POSTER, 48 px IR image stream",
    "poster_v1_tiny": "a few-layer POSTER for tests",
    "poster_v1_tiny_dlib": "tiny POSTER with a (1-level) dlib ResNet image stream",
    "poster_v1_tiny_image_only": "tiny image-only POSTER for tests",
    "poster_v1_tiny_mfn": "tiny POSTER with a (2-stage) ArcFace MobileFaceNet image stream",
    "poster_v2": "POSTER++ (7 or 8 classes via num_classes)",
    "poster_v2_tiny": "a small POSTER++ for tests",
}

#: names retired when architectures and weights were split (issue 22) -> the architecture they now build
RETIRED: dict[str, str] = {
    "poster_v1_ferplus_dlib": "poster_v1_dlib",
    "poster_v1_ferplus_mfn": "poster_v1_mfn",
    "poster_v1_ferplus_mfn64_image": "poster_v1_mfn64_image",
    "poster_v1_ferplus_mfn_image": "poster_v1_mfn_image",
    "poster_v1_ferplus_s": "poster_v1_s",
    "poster_v1_ferplus_s_image": "poster_v1_s_image",
}


def list_architectures(pattern: str | None = None) -> list[str]:
    """Architecture names, sorted; ``pattern`` filters them (shell wildcards, or a substring)."""
    return sorted(n for n in ARCHITECTURES if name_matches(n, pattern))


def describe_architecture(name: str) -> str:
    """The one-line description of an architecture (a retired name: of the one it now builds)."""
    base = name.split(".", 1)[0]
    base = RETIRED.get(base, base)
    if base not in ARCHITECTURES:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_architectures())}")
    return ARCHITECTURES[base]
