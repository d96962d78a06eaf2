"""Model backends behind :class:`~poster_fer.inference.Recognizer`: one call, numpy batch in, logits out.

Keeping the model behind ``__call__(float32 (B, 3, S, S)) -> logits (B, C)`` plus a ``meta`` record lets the
same face pipeline drive a PyTorch model (CPU or CUDA) or an exported ONNX file in ONNX Runtime, so the two
cannot drift apart in preprocessing.

The logits a backend returns are already ``(logits + logit_bias) / temperature`` with the values its metadata
records (``meta["logit_bias"]``, per-class offsets that undo the training set's class prior, none when
absent; ``meta["temperature"]``, 1 when absent), so whatever applies the softmax gets the deployed, calibrated
confidences from either backend, and the two cannot drift apart. ONNX files hold the raw-logit graph and carry
both values as metadata.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..constants import OFFICIAL_SUFFIXES
from ..models import set_fused_attention
from ..precision import resolve_precision
from ..probabilities import calibrate_logits, get_logit_bias, get_temperature
from ..weights import load_model, load_official
from ..weights.checks import check_metadata

__all__ = ["Backend", "InferenceError", "OnnxBackend", "TorchBackend", "load_backend", "resolve_device"]



log = logging.getLogger(__name__)

class InferenceError(RuntimeError):
    """The recognizer cannot be set up as asked (missing backend, device, unreadable model); says what to do."""


class Backend(Protocol):
    """What the recognizer needs from a model."""

    meta: dict[str, Any]
    device: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def _logit_bias(meta: dict[str, Any], where: Any) -> np.ndarray | None:
    """The metadata's per-class logit offsets (None when absent), refusing a malformed record."""
    try:
        bias = get_logit_bias(meta)
    except ValueError as err:
        raise InferenceError(f"{where}: bad logit_bias in the metadata ({err})") from None
    return None if bias is None else np.asarray(bias, dtype=np.float32)


def _temperature(meta: dict[str, Any], where: Any) -> float:
    """The metadata's calibration temperature (1.0 when absent), refusing a value that cannot scale logits."""
    try:
        return get_temperature(meta)
    except ValueError as err:
        raise InferenceError(f"{where}: bad calibration temperature in the metadata ({err})") from None


def resolve_device(device: str | None) -> str:
    """:func:`poster_fer.devices.resolve_device` as the string the backends keep, failing as an InferenceError."""
    from ..devices import DeviceError
    from ..devices import resolve_device as resolve

    try:
        return str(resolve(device))
    except DeviceError as err:
        raise InferenceError(str(err)) from None


class TorchBackend:
    """A poster-fer PyTorch model in eval mode under ``inference_mode``.

    ``autocast`` ("bf16" or "fp16") runs the forward pass under :func:`torch.autocast` on the model's device;
    logits are always returned as float32. ``fused_attention`` switches attention to PyTorch's fused kernel,
    which is faster and equal to the explicit softmax up to float rounding. Logits are divided by the
    model's calibration temperature (``model.meta["temperature"]``, 1 when absent). ``fast`` runs a copy
    through the exact fast paths of :mod:`poster_fer.fastpath` (``self.net``; ``self.model`` is the original).
    """

    def __init__(self, model: Any, device: str = "auto", autocast: str | None = None,
                 fused_attention: bool = True, fast: bool = True) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        if fused_attention:
            set_fused_attention(self.model, True)
        self.meta: dict[str, Any] = dict(getattr(model, "meta", None) or {})
        self.meta.setdefault("model", getattr(model, "model_name", None))
        if "preprocessing" not in self.meta:
            self.meta["preprocessing"] = {"input_size": int(model.cfg.input_size)}
        if not self.meta.get("classes"):
            raise InferenceError(f"{self.meta.get('model') or 'the model'} records no class names: build it with "
                                 "create_model(..., classes=[...]) or load it with load_model(path, classes=[...])")
        self.temperature = _temperature(self.meta, getattr(model, "model_name", "model"))
        self.logit_bias = _logit_bias(self.meta, getattr(model, "model_name", "model"))
        try:
            self.autocast = None if autocast is None else resolve_precision(autocast, self.device, "autocast")
        except ValueError as err:
            raise InferenceError(str(err)) from None
        # The exact fast paths (BN folded into convs, trivial layers simplified, channels-last convolutions;
        # outputs equal to ~1e-6, checked in tests) on a copy: ``self.model`` stays the model as given.
        self.net = self.model
        if fast:
            from ..fastpath import optimize_for_inference

            try:
                self.net = optimize_for_inference(self.model, precision="fp32", fused_attention=fused_attention)
            except (TypeError, ValueError, AttributeError, RuntimeError) as err:
                log.warning("inference fast paths unavailable for this model (%s); running it as is", err)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        dev_type = torch.device(self.device).type
        amp = (torch.autocast(dev_type, dtype=self.autocast) if self.autocast is not None
               else contextlib.nullcontext())
        with torch.inference_mode(), amp:
            logits = self.net(x)
        return calibrate_logits(logits.float().cpu().numpy(), self.temperature, self.logit_bias)


class OnnxBackend:
    """An exported ``.onnx`` file run by ONNX Runtime through :class:`poster_fer.export.OnnxRuntimeModel`.

    The file's graph returns raw logits; they are divided here by the temperature its metadata records, as
    :class:`TorchBackend` does for the checkpoint it was exported from.
    """

    def __init__(self, path: str | os.PathLike[str], device: str = "auto") -> None:
        try:
            from ..export import OnnxRuntimeModel
        except ImportError as err:
            raise InferenceError(
                f"the onnxruntime backend is unavailable ({err}); install it with "
                "`pip install 'poster-fer[onnx]'`, or use backend 'torch' with a poster-fer checkpoint"
            ) from None
        self.path = Path(path)
        if not self.path.is_file():
            raise InferenceError(f"{self.path}: no such ONNX file")
        try:
            self.session = OnnxRuntimeModel(str(self.path))
        except Exception as err:  # ONNX Runtime raises its own types for a file that is not a model
            text = str(err).splitlines()[0][:300]
            raise InferenceError(text if str(self.path) in text else f"{self.path}: not a usable ONNX model ({text})") \
                from None
        self.meta = dict(getattr(self.session, "meta", None) or {})
        if "classes" not in self.meta or "preprocessing" not in self.meta:
            raise InferenceError(f"{self.path}: the ONNX file carries no poster-fer metadata (classes, "
                                 "preprocessing); export it with `poster-fer export`")
        check_metadata(self.meta, self.path, rebuild=False)
        self.temperature = _temperature(self.meta, self.path)
        self.logit_bias = _logit_bias(self.meta, self.path)
        self.device = device

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        logits = self.session(np.ascontiguousarray(batch, dtype=np.float32))
        return calibrate_logits(logits, self.temperature, self.logit_bias)


def load_backend(
    path: str | os.PathLike[str],
    backend: str = "torch",
    device: str = "auto",
    model: str | None = None,
    num_classes: int | None = None,
    classes: list[str] | None = None,
    channel_order: str | None = None,
    autocast: str | None = None,
) -> Backend:
    """Open a checkpoint for inference.

    ``backend="torch"``: a poster-fer model directory or ``.safetensors`` file (:func:`poster_fer.load_model`),
    or an official ``.pth``/``.pth.tar`` checkpoint (:func:`poster_fer.load_official`; ``model`` names the
    registered variant, default ``poster_v1``, with ``num_classes``/``classes``/``channel_order`` as there).
    ``backend="onnxruntime"`` (or a ``.onnx`` path): an exported model with its embedded metadata.
    """
    p = Path(path)
    kind = backend.lower()
    if kind in ("onnx", "ort"):
        kind = "onnxruntime"
    if p.suffix.lower() == ".onnx" and kind == "torch":
        kind = "onnxruntime"
    if kind == "onnxruntime":
        return OnnxBackend(p, device=device)
    if kind != "torch":
        raise InferenceError(f"unknown backend {backend!r}; choose 'torch' or 'onnxruntime'")
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    dev = resolve_device(device)
    if p.is_file() and p.suffix.lower() in OFFICIAL_SUFFIXES:
        net = load_official(p, model=model or "poster_v1", num_classes=num_classes, classes=classes,
                            channel_order=channel_order)
    else:
        net = load_model(p, device=dev)
    return TorchBackend(net, device=dev, autocast=autocast)
