"""The preprocessing record: the one typed description of what a checkpoint's input must look like.

Like timm's ``PretrainedCfg``, one record is written by everything that makes a checkpoint (training, the
official-checkpoint converter, :func:`poster_fer.weights.save_model`) as the card's ``preprocessing``
(:meth:`Preprocessing.to_meta`, meta.json's ``preprocessing`` object), and read by everything that feeds one
(evaluation's transform, inference), so the contract is spelled out in this file only.

Why it matters: a POSTER checkpoint only ever saw its training set's crops: a particular face framing (how much
forehead, where the eyes sit), colour or grey, the channel order of the loader that read the files, a resize to
``input_size`` and a normalisation. An inference crop that differs in any of these gives confident wrong
answers rather than an error, which is what users who wrote their own cropping ran into. So every step is read
from the record and none is hard-coded:

1. align the face onto ``crop_geometry`` (5-point similarity warp, :func:`poster_fer.faces.align_face`) at the
   dataset's own crop size (100x100 for RAF-DB, 48x48 for FER2013);
2. if ``grayscale``: luma, replicated to 3 channels (FER2013 / FER+ models never saw colour);
3. resize to ``input_size`` with Pillow (``resize_interpolation``, bilinear by default), which is what the
   evaluation transform (torchvision ``Resize`` on a PIL image) does in training;
4. scale to [0, 1], reverse channels for ``channel_order == "BGR"`` (the official v1 RAF-DB weights), then
   subtract ``mean`` and divide by ``std`` as stored.

The steps are numpy, so the same code feeds the PyTorch model and an ONNX Runtime session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..faces import CropGeometry, align_face, get_geometry

__all__ = ["DEFAULT_GEOMETRY", "STORED_KEYS", "ImageTransform", "Preprocessing", "create_transform",
           "resolve_preprocessing"]

#: The keys of the stored form (meta.json's ``preprocessing`` object, a card's ``preprocessing``).
STORED_KEYS = ("input_size", "mean", "std", "channel_order", "grayscale", "resize_interpolation", "crop_geometry")

#: Crop geometry assumed when a checkpoint records none: the official checkpoints were trained on RAF-DB's
#: aligned crops (and AffectNet's, which are framed alike).
DEFAULT_GEOMETRY = "rafdb"

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class Preprocessing:
    """The checkpoint's input contract; build it with :meth:`from_meta`."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "RGB"
    grayscale: bool = False
    interpolation: str = "bilinear"
    geometry: CropGeometry = get_geometry(DEFAULT_GEOMETRY)
    geometry_assumed: bool = False  # True when the metadata named no geometry and the default was used

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', not {self.channel_order!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"resize_interpolation {self.interpolation!r} is not one of {sorted(_RESAMPLE)}")
        if int(self.input_size) < 1 or len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"bad preprocessing: input_size={self.input_size}, mean={self.mean}, std={self.std}")

    @classmethod
    def default(cls, input_size: int, channel_order: str = "RGB") -> Preprocessing:
        """What a checkpoint that says nothing else is taken to expect: ImageNet statistics, colour, bilinear,
        the default crop geometry (marked as assumed)."""
        return cls(input_size=int(input_size), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                   channel_order=str(channel_order).upper(), geometry_assumed=True)

    @classmethod
    def from_meta(cls, meta: Any, input_size: int | None = None) -> Preprocessing:
        """The preprocessing of a :class:`~poster_fer.card.ModelCard` (or of a metadata dict as earlier releases
        passed it, read into a card first); ``input_size`` is the fallback size."""
        from ..card import ModelCard

        card = meta if isinstance(meta, ModelCard) else ModelCard.from_meta(meta)
        return cls.from_dict(card.preprocessing, input_size)

    @classmethod
    def from_dict(cls, prep: Mapping[str, Any], input_size: int | None = None) -> Preprocessing:
        """Read the stored form (:meth:`to_meta`; missing keys take :meth:`default`'s values)."""
        unknown = set(prep) - set(STORED_KEYS) - {"crop_geometry_assumed"}
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        size = prep.get("input_size", input_size)
        if size is None:
            raise ValueError("checkpoint metadata gives no preprocessing.input_size")
        geo = prep.get("crop_geometry")
        return cls(
            input_size=int(size),
            mean=_triple(prep.get("mean", IMAGENET_MEAN), "mean"),
            std=_triple(prep.get("std", IMAGENET_STD), "std"),
            channel_order=str(prep.get("channel_order", "RGB")).upper(),
            grayscale=bool(prep.get("grayscale", False)),
            interpolation=str(prep.get("resize_interpolation", "bilinear")).lower(),
            geometry=get_geometry(geo if geo is not None else DEFAULT_GEOMETRY),
            geometry_assumed=geo is None,
        )

    def to_meta(self) -> dict[str, Any]:
        """The stored form, a saved model's ``preprocessing`` (``crop_geometry`` is None when it was
        assumed, so a reader can still tell that the checkpoint never named one)."""
        return {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std),
                "channel_order": self.channel_order, "grayscale": self.grayscale,
                "resize_interpolation": self.interpolation,
                "crop_geometry": None if self.geometry_assumed else self.geometry.to_dict()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for logs and reports: the stored form with the geometry in use spelled out."""
        return {**self.to_meta(), "crop_geometry": self.geometry.to_dict(),
                "crop_geometry_assumed": self.geometry_assumed}

    # -- steps -------------------------------------------------------------------------------------------

    def align(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Aligned crop (uint8 RGB, the geometry's size) as the model sees it before the resize."""
        return self.prepare_crop(align_face(rgb, landmarks, self.geometry))

    def prepare_crop(self, crop: np.ndarray) -> np.ndarray:
        """Colour handling of an (already aligned) uint8 RGB crop: grey -> 3 channels when the model wants it."""
        if self.grayscale:
            # Pillow's ITU-R 601 luma, as a PIL-based training pipeline computes it (cv2 rounds differently)
            grey = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).convert("L"))
            return np.repeat(grey[:, :, None], 3, axis=2)
        return crop

    def pixels(self, crop: np.ndarray | Image.Image) -> np.ndarray:
        """A face crop (uint8 RGB or grey array, or a PIL image) -> uint8 ``(S, S, 3)`` RGB at ``input_size``:
        grey when the model wants it, then the resize. Training preloads these pixels; everything else
        normalises them with :meth:`to_input`, so the two cannot differ."""
        if isinstance(crop, Image.Image):
            crop = np.asarray(crop.convert("RGB"))
        elif crop.ndim == 2:
            crop = np.repeat(crop[:, :, None], 3, axis=2)
        crop = self.prepare_crop(np.ascontiguousarray(crop, dtype=np.uint8))
        s = self.input_size
        if crop.shape[:2] != (s, s):
            crop = np.asarray(Image.fromarray(crop).resize((s, s), _RESAMPLE[self.interpolation]))
        return crop

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``(S, S, 3)`` RGB -> float32 ``(3, S, S)``: [0, 1], channel order, mean/std (the arithmetic of
        the training loader's on-device normalisation, so both give the same floats)."""
        x = pixels.astype(np.float32) / np.float32(255.0)
        if self.channel_order == "BGR":
            x = x[:, :, ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def to_input(self, crop: np.ndarray | Image.Image) -> np.ndarray:
        """One face crop -> float32 ``(3, S, S)``: :meth:`pixels` then :meth:`normalize`."""
        return self.normalize(self.pixels(crop))

    def batch(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Prepared crops -> float32 ``(B, 3, S, S)``."""
        s = self.input_size
        if not crops:
            return np.zeros((0, 3, s, s), np.float32)
        return np.stack([self.to_input(c) for c in crops])


def _triple(values: Sequence[float], name: str) -> tuple[float, float, float]:
    vals = tuple(float(v) for v in values)
    if len(vals) != 3:
        raise ValueError(f"preprocessing.{name} needs 3 values, got {list(values)}")
    return vals  # type: ignore[return-value]


class ImageTransform:
    """``create_transform``'s callable: a face crop (PIL image, uint8 array, or an image file's path) -> the
    float32 tensor ``(3, S, S)`` the model takes. Crops are used as they are (no detection or alignment)."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing

    def __call__(self, image: Any) -> Any:
        import torch

        if isinstance(image, (str, Path)):
            with Image.open(image) as im:
                image = im.convert("RGB")
        return torch.from_numpy(self.preprocessing.to_input(image))

    def __repr__(self) -> str:
        p = self.preprocessing
        return (f"ImageTransform(size={p.input_size}, grayscale={p.grayscale}, channel_order={p.channel_order}, "
                f"interpolation={p.interpolation})")


def create_transform(source: Any) -> ImageTransform:
    """The input transform of a model, a weights name or record, a metadata record or its ``preprocessing``
    part, or a :class:`Preprocessing` (timm's ``create_transform`` from a ``pretrained_cfg``).

    It is the one preprocessing implementation: evaluation uses it, inference prepares crops through the same
    :class:`Preprocessing` steps and training preloads :meth:`Preprocessing.pixels`.
    """
    return ImageTransform(resolve_preprocessing(source))


def resolve_preprocessing(source: Any) -> Preprocessing:
    """:func:`create_transform`'s argument as a :class:`Preprocessing`."""
    if isinstance(source, Preprocessing):
        return source
    if isinstance(source, str):
        from .records import get_weights

        source = get_weights(source)
    prep = getattr(source, "preprocessing", None)
    if prep is not None and not callable(prep):  # a WeightsRecord
        return Preprocessing.from_dict(prep)
    cfg = getattr(source, "cfg", None)
    if cfg is not None:  # a model: its card's preprocessing, else the defaults at its input size
        card = getattr(source, "card", None)
        if card is not None and card.preprocessing:
            return Preprocessing.from_dict(card.preprocessing, int(cfg.input_size))
        return Preprocessing.default(int(cfg.input_size))
    if isinstance(source, Mapping):
        return Preprocessing.from_meta(source) if "preprocessing" in source else Preprocessing.from_dict(source)
    raise TypeError(f"create_transform: cannot read a preprocessing record from {type(source).__name__}")
