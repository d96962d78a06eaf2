"""Model backends behind :class:`~poster_fer.inference.Recognizer`: one call, numpy batch in, logits out.

Keeping the model behind ``__call__(float32 (B, 3, S, S)) -> logits (B, C)`` plus a ``meta`` record lets the
same face pipeline drive a PyTorch model (CPU or CUDA) or an exported ONNX file in ONNX Runtime, so the two
cannot drift apart in preprocessing.

The logits a backend returns are already ``(logits + logit_bias) / temperature`` with the values its metadata
records (``meta["logit_bias"]``, per-class offsets that undo the training set's class prior, none when
absent; ``meta["temperature"]``, 1 when absent), so whatever applies the softmax gets the deployed, calibrated
confidences from either backend, and the two cannot drift apart. ONNX files hold the raw-logit graph and carry
both values as metadata.

Which backend: ``"auto"`` (the default) is PyTorch when it is installed and ONNX Runtime otherwise, so
``pip install poster-fer`` without extras labels faces with the ONNX file each shipped model carries beside its
weights (``model.onnx`` in the saved-model folder); ``"torch"`` or ``"onnxruntime"`` asks for one. Why PyTorch
first when both are present: it is the reference the ONNX files are checked against, and it is what Grad-CAM,
fine-tuning and autocast need; the ONNX path gives the same crops, labels and calibrated probabilities
(benchmarks/bench_runtime.py measures both). Nothing here imports PyTorch until a PyTorch backend is built.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .._lazy import module_available
from ..constants import BACKENDS, ONNX_FILE
from ..errors import CheckpointError, InferenceError
from ..probabilities import calibrate_logits, get_logit_bias, get_temperature, with_operating_point
from ..weights.checks import check_metadata

if TYPE_CHECKING:
    from ..hub import OfficialOptions

__all__ = ["BACKENDS", "Backend", "InferenceError", "OnnxBackend", "TorchBackend", "load_backend", "onnx_file",
           "resolve_backend", "resolve_device", "torch_available"]


log = logging.getLogger(__name__)



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


def _operating_point(meta: dict[str, Any], name: str | None, where: Any) -> dict[str, Any]:
    """``meta`` with operating point ``name``'s calibration (None: the record's default), as an InferenceError."""
    try:
        return with_operating_point(meta, name)
    except ValueError as err:
        raise InferenceError(f"{where}: {err}") from None


def _temperature(meta: dict[str, Any], where: Any) -> float:
    """The metadata's calibration temperature (1.0 when absent), refusing a value that cannot scale logits."""
    try:
        return get_temperature(meta)
    except ValueError as err:
        raise InferenceError(f"{where}: bad calibration temperature in the metadata ({err})") from None


def torch_available() -> bool:
    """Whether PyTorch is installed (found without importing it, which would cost a second)."""
    return module_available("torch")


def _need_torch(what: str) -> None:
    if not torch_available():
        raise InferenceError(f"{what} needs PyTorch, which is not installed: `pip install 'poster-fer[torch]'`, or "
                             "use the ONNX runtime (backend 'onnxruntime', the shipped models' model.onnx files)")


def resolve_device(device: str | None) -> str:
    """:func:`poster_fer.devices.resolve_device` as the string the backends keep, failing as an InferenceError."""
    _need_torch(f"device {device!r}")
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
    model's calibration temperature (the card's ``temperature``, 1 when absent), after adding its logit bias;
    ``operating_point`` picks another of the calibrations the record offers (:mod:`poster_fer.probabilities`).
    ``fast`` runs a copy through the exact fast paths of :mod:`poster_fer.fastpath` (``self.net``; ``self.model``
    is the original).
    """

    def __init__(self, model: Any, device: str = "auto", autocast: str | None = None,
                 fused_attention: bool = True, fast: bool = True, operating_point: str | None = None) -> None:
        from ..models import set_fused_attention
        from ..precision import resolve_precision

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        if fused_attention:
            set_fused_attention(self.model, True)
        card = getattr(model, "card", None)
        self.meta: dict[str, Any] = card.to_meta() if card is not None else dict(getattr(model, "meta", None) or {})
        self.meta.setdefault("model", getattr(model, "model_name", None))
        if "preprocessing" not in self.meta:
            self.meta["preprocessing"] = {"input_size": int(model.cfg.input_size)}
        if not self.meta.get("classes"):
            raise InferenceError(f"{self.meta.get('model') or 'the model'} records no class names: build it with "
                                 "create_model(..., classes=[...]) or load it with load_model(path, classes=[...])")
        self.meta = _operating_point(self.meta, operating_point, getattr(model, "model_name", "model"))
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

        from ..precision import autocast

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.autocast)():
            logits = self.net(x)
        return calibrate_logits(logits.float().cpu().numpy(), self.temperature, self.logit_bias)


class OnnxBackend:
    """An exported ``.onnx`` file run by ONNX Runtime through :class:`poster_fer.export.OnnxRuntimeModel`.

    The file's graph returns raw logits; they are divided here by the temperature its metadata records, as
    :class:`TorchBackend` does for the checkpoint it was exported from.
    """

    def __init__(self, path: str | os.PathLike[str], device: str = "auto", operating_point: str | None = None,
                 threads: int | None = None) -> None:
        if (device or "auto").lower() not in ("auto", "cpu"):
            raise InferenceError(f"the onnxruntime backend runs on the CPU here; device {device!r} needs the torch "
                                 "backend (`pip install 'poster-fer[torch]'`)")
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
            self.session = OnnxRuntimeModel(str(self.path), **({"threads": threads} if threads else {}))
        except Exception as err:  # ONNX Runtime raises its own types for a file that is not a model
            text = str(err).splitlines()[0][:300]
            raise InferenceError(text if str(self.path) in text else f"{self.path}: not a usable ONNX model ({text})") \
                from None
        self.meta = dict(getattr(self.session, "meta", None) or {})
        if "classes" not in self.meta or "preprocessing" not in self.meta:
            raise InferenceError(f"{self.path}: the ONNX file carries no poster-fer metadata (classes, "
                                 "preprocessing); export it with `poster-fer export`")
        check_metadata(self.meta, self.path, rebuild=False)
        _check_graph(self.session, self.meta, self.path)
        self.meta = _operating_point(self.meta, operating_point, self.path)
        self.temperature = _temperature(self.meta, self.path)
        self.logit_bias = _logit_bias(self.meta, self.path)
        self.device = "cpu"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        logits = self.session(np.ascontiguousarray(batch, dtype=np.float32))
        return calibrate_logits(logits, self.temperature, self.logit_bias)


def _check_graph(session: Any, meta: dict[str, Any], where: Path) -> None:
    """Refuse an ONNX file whose graph does not do what its embedded description says (the input size the
    preprocessing makes, one logit per class): one run on a blank batch, at open, instead of a crash at the first
    face."""
    size = int((meta.get("preprocessing") or {}).get("input_size") or 0)
    classes = len(meta.get("classes") or [])
    try:
        out = np.asarray(session(np.zeros((1, 3, size, size), np.float32)))
    except Exception as err:  # ONNX Runtime raises its own types when the shapes do not fit
        text = str(err).splitlines()[0][:200]
        raise InferenceError(f"{where}: its graph does not take the {size}x{size} input its description names "
                             f"({text})") from None
    if out.shape != (1, classes):
        raise InferenceError(f"{where}: its graph returns shape {tuple(out.shape)} for one face, but its "
                             f"description names {classes} classes; re-export it with `poster-fer export`")


def resolve_backend(backend: str | None) -> str:
    """A ``backend=`` value as "torch" or "onnxruntime": "auto"/None is PyTorch when installed, else ONNX Runtime."""
    kind = (backend or "auto").lower()
    if kind in ("onnx", "ort"):
        kind = "onnxruntime"
    if kind not in BACKENDS:
        raise InferenceError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if kind == "auto":
        kind = "torch" if torch_available() else "onnxruntime"
    return kind


def onnx_file(path: str | os.PathLike[str]) -> Path:
    """The ONNX file for a checkpoint argument: the path itself (a ``.onnx``) or a saved-model folder's
    ``model.onnx``; a clear error when the folder has none."""
    p = Path(path)
    if p.is_dir():
        found = p / ONNX_FILE
        if not found.is_file():
            raise InferenceError(f"{p}: no {ONNX_FILE} beside the weights for the ONNX runtime; write one with "
                                 f"`poster-fer export --weights {p} --storage float16 --out {found}`, "
                                 "or install PyTorch (`pip install 'poster-fer[torch]'`) to run the weights themselves")
        return found
    if p.suffix.lower() != ".onnx":
        raise InferenceError(f"{p}: the onnxruntime backend takes a .onnx file or a saved-model folder holding "
                             f"{ONNX_FILE}" + ("" if torch_available() else
                                              " (PyTorch, which reads other checkpoints, is not installed)"))
    return p


def load_backend(
    path: str | os.PathLike[str],
    backend: str | None = "auto",
    device: str = "auto",
    *,
    official: OfficialOptions | None = None,
    autocast: str | None = None,
    operating_point: str | None = None,
    threads: int | None = None,
    **legacy: Any,
) -> Backend:
    """Open a checkpoint for inference.

    ``backend="torch"``: a poster-fer model directory or ``.safetensors`` file, or an official
    ``.pth``/``.pth.tar`` checkpoint read with ``official`` (:class:`poster_fer.hub.OfficialOptions`), both
    through :func:`poster_fer.hub.open_checkpoint`. ``backend="onnxruntime"`` (or a ``.onnx`` path): an exported
    model with its embedded metadata, or a model directory's ``model.onnx``. ``"auto"`` (default): torch when
    PyTorch is installed, else onnxruntime. ``operating_point``: one of the calibrations the weights record
    (``poster-fer info NAME``); None: its default. ``threads``: ONNX Runtime's intra-op threads (None: one per
    core); one for each of many workers (Ray actors). ``model=``, ``num_classes=``, ``classes=`` and
    ``channel_order=`` still work, with a DeprecationWarning.
    """
    from ..hub import OfficialOptions, is_official_checkpoint, open_checkpoint

    official = OfficialOptions.from_legacy(official, legacy, "load_backend")
    if legacy:
        raise TypeError(f"load_backend() got unexpected keyword arguments {sorted(legacy)}")
    p = Path(path)
    try:
        is_official = is_official_checkpoint(p, official.model if official else None)
    except ValueError as err:
        raise InferenceError(str(err)) from None
    kind = "onnxruntime" if p.suffix.lower() == ".onnx" else resolve_backend(backend)
    if is_official and kind == "onnxruntime":
        kind = "torch"  # the authors' checkpoints have no ONNX file: only PyTorch reads them
    if kind == "onnxruntime":
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such checkpoint")
        return OnnxBackend(onnx_file(p), device=device, operating_point=operating_point, threads=threads)
    _need_torch(f"{p} (backend 'torch')")
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    dev = resolve_device(device)
    try:
        net = open_checkpoint(p, official, device=dev)
    except CheckpointError:
        raise  # the file's own problem, said as such
    except ValueError as err:  # an option that does not fit the file
        raise InferenceError(str(err)) from None
    return TorchBackend(net, device=dev, autocast=autocast, operating_point=operating_point)
