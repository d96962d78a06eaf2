"""Model backends behind :class:`~poster_fer.inference.Recognizer`: one call, numpy batch in, logits out.

Keeping the model behind ``__call__(float32 (B, 3, S, S)) -> logits (B, C)`` plus its ``card``
(:class:`~poster_fer.card.ModelCard`: classes, preprocessing, calibration) lets the same face pipeline drive a
PyTorch model (CPU or CUDA) or an exported ONNX file in ONNX Runtime, so the two cannot drift apart in
preprocessing.

The logits a backend returns are already ``(logits + logit_bias) / temperature`` with the values its card
records (``logit_bias``, per-class offsets that undo the training set's class prior, none when absent;
``temperature``, 1 when absent), so whatever applies the softmax gets the deployed, calibrated confidences from
either backend, and the two cannot drift apart. ONNX files hold the raw-logit graph and carry both values as
metadata.

Which backend: ``"auto"`` (the default) is PyTorch when it is installed and ONNX Runtime otherwise, so
``pip install poster-fer`` without extras labels faces with the ONNX file each shipped model carries beside its
weights (``model.onnx`` in the saved-model folder); ``"torch"`` or ``"onnxruntime"`` asks for one. Why PyTorch
first when both are present: it is the reference the ONNX files are checked against, and it is what Grad-CAM,
fine-tuning and autocast need; the ONNX path gives the same crops, labels and calibrated probabilities
(benchmarks/bench_runtime.py measures both). Nothing here imports PyTorch until a PyTorch backend is built.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .._lazy import module_available
from ..card import ModelCard, card_of
from ..constants import BACKENDS, ONNX_FILE
from ..errors import CheckpointError, InferenceError
from ..probabilities import calibrate_logits, get_logit_bias, get_temperature, with_operating_point
from ..weights.checks import parse_metadata

if TYPE_CHECKING:
    from ..hub import OfficialOptions

__all__ = ["BACKENDS", "Backend", "BackendOptions", "InferenceError", "OnnxBackend", "TorchBackend", "load_backend",
           "onnx_file", "resolve_backend", "resolve_device", "torch_available"]


log = logging.getLogger(__name__)


class Backend(Protocol):
    """What the recognizer needs from a model: a ``card`` (:class:`~poster_fer.card.ModelCard`; a backend
    written before cards may give ``meta``, the metadata dict, instead, read by :func:`poster_fer.card.card_of`),
    the device, and calibrated logits."""

    device: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


class _Calibrated:
    """What both backends hold: the card (its calibration the chosen operating point's), the temperature and
    logit bias read from it once, and ``meta``, the card as the old metadata dict (prefer ``card``)."""

    card: ModelCard
    temperature: float
    logit_bias: np.ndarray | None

    def _calibrate(self, card: ModelCard, operating_point: str | None, where: Any) -> None:
        """Take ``card`` with operating point ``operating_point``'s calibration; every problem an InferenceError."""
        try:
            self.card = with_operating_point(card, operating_point)
        except ValueError as err:
            raise InferenceError(f"{where}: {err}") from None
        try:
            self.temperature = get_temperature(self.card)
        except ValueError as err:
            raise InferenceError(f"{where}: bad calibration temperature in the metadata ({err})") from None
        try:
            bias = get_logit_bias(self.card)
        except ValueError as err:
            raise InferenceError(f"{where}: bad logit_bias in the metadata ({err})") from None
        self.logit_bias = None if bias is None else np.asarray(bias, dtype=np.float32)

    @property
    def meta(self) -> dict[str, Any]:
        """The card as the metadata dict of earlier releases (a copy; prefer ``card``)."""
        return self.card.to_meta()


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


class TorchBackend(_Calibrated):
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
        self._calibrate(_torch_card(model), operating_point, getattr(model, "model_name", "model"))
        try:
            self.autocast = None if autocast is None else resolve_precision(autocast, self.device, "autocast")
        except ValueError as err:
            raise InferenceError(str(err)) from None
        # The exact fast paths (BN folded into convs, trivial layers simplified, channels-last convolutions;
        # outputs equal to ~1e-6, checked in tests) on a copy: ``self.model`` stays the model as given.
        self.net = self.model
        if fast:
            from ..fastpath import FastPaths, optimize_for_inference

            try:
                self.net = optimize_for_inference(self.model, precision="fp32",
                                                  options=FastPaths(fused_attention=fused_attention))
            except (TypeError, ValueError, AttributeError, RuntimeError) as err:
                log.warning("inference fast paths unavailable for this model (%s); running it as is", err)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        from ..precision import autocast

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.autocast)():
            logits = self.net(x)
        return calibrate_logits(logits.float().cpu().numpy(), self.temperature, self.logit_bias)


def _torch_card(model: Any) -> ModelCard:
    """A model's card as a backend needs it: its architecture and input size filled in when missing, and
    refused without class names (they are never guessed)."""
    card = card_of(model)  # a model before cards gives its ``meta`` dict
    if card.architecture is None and getattr(model, "model_name", None):
        card = dataclasses.replace(card, architecture=model.model_name)
    if not card.preprocessing:
        card = dataclasses.replace(card, preprocessing={"input_size": int(model.cfg.input_size)})
    if not card.classes:
        raise InferenceError(f"{card.architecture or 'the model'} records no class names: build it with "
                             "create_model(..., classes=[...]) or load it with load_model(path, classes=[...])")
    return card


class OnnxBackend(_Calibrated):
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
        record = getattr(self.session, "meta", None) or {}
        if "classes" not in record or "preprocessing" not in record:
            raise InferenceError(f"{self.path}: the ONNX file carries no poster-fer metadata (classes, "
                                 "preprocessing); export it with `poster-fer export`")
        card = parse_metadata(record, self.path, rebuild=False)  # the file's record, read once
        self.session.card = card  # the runtime's own view of the file (input size, classes) is this one
        _check_graph(self.session, card, self.path)
        self._calibrate(card, operating_point, self.path)
        self.device = "cpu"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        logits = self.session(np.ascontiguousarray(batch, dtype=np.float32))
        return calibrate_logits(logits, self.temperature, self.logit_bias)


def _check_graph(session: Any, card: ModelCard, where: Path) -> None:
    """Refuse an ONNX file whose graph does not do what its embedded description says (the input size the
    preprocessing makes, one logit per class): one run on a blank batch, at open, instead of a crash at the first
    face."""
    size = int(card.preprocessing.get("input_size") or 0)
    classes = len(card.classes)
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


@dataclass(frozen=True)
class BackendOptions:
    """How :func:`load_backend` opens a checkpoint besides its path, backend and device: ``official`` reads one
    of the authors' ``.pth`` files (:class:`poster_fer.hub.OfficialOptions`), ``autocast`` the PyTorch precision
    ("bf16", "fp16"), ``operating_point`` one of the calibrations the weights record (None: the default),
    ``threads`` ONNX Runtime's intra-op threads (None: one per core)."""

    official: OfficialOptions | None = None
    autocast: str | None = None
    operating_point: str | None = None
    threads: int | None = None

    @classmethod
    def take(cls, options: BackendOptions | None, keywords: dict[str, Any], where: str) -> BackendOptions:
        """``options`` with the ones given as separate keywords (``official=``, ``autocast=``,
        ``operating_point=``, ``threads=``, the documented call form) popped from ``keywords`` and set; the
        official checkpoint's options passed the old way (``model=``, ``classes=``, ...) warn and are merged."""
        from ..hub import OfficialOptions

        given = {f.name: keywords.pop(f.name) for f in dataclasses.fields(cls) if f.name in keywords}
        opts = dataclasses.replace(options or cls(), **given)
        official = OfficialOptions.from_legacy(opts.official, keywords, where)
        return opts if official is opts.official else dataclasses.replace(opts, official=official)


def load_backend(path: str | os.PathLike[str], backend: str | None = "auto", device: str = "auto", *,
                 options: BackendOptions | None = None, **keywords: Any) -> Backend:
    """Open a checkpoint for inference.

    ``backend="torch"``: a poster-fer model directory or ``.safetensors`` file, or an official
    ``.pth``/``.pth.tar`` checkpoint read with ``official`` (:class:`poster_fer.hub.OfficialOptions`), both
    through :func:`poster_fer.hub.open_checkpoint`. ``backend="onnxruntime"`` (or a ``.onnx`` path): an exported
    model with its embedded metadata, or a model directory's ``model.onnx``. ``"auto"`` (default): torch when
    PyTorch is installed, else onnxruntime.

    Keywords (each a field of :class:`BackendOptions`, which ``options=`` passes at once): ``official``,
    ``autocast``, ``operating_point``: one of the calibrations the weights record (``poster-fer info NAME``);
    None: its default. ``threads``: ONNX Runtime's intra-op threads (None: one per core); one for each of many
    workers (Ray actors). ``model=``, ``num_classes=``, ``classes=`` and ``channel_order=`` still work, with a
    DeprecationWarning.
    """
    from ..hub import is_official_checkpoint, open_checkpoint

    opts = BackendOptions.take(options, keywords, "load_backend")
    if keywords:
        raise TypeError(f"load_backend() got unexpected keyword arguments {sorted(keywords)}")
    p = Path(path)
    try:
        is_official = is_official_checkpoint(p, opts.official.model if opts.official else None)
    except ValueError as err:
        raise InferenceError(str(err)) from None
    kind = "onnxruntime" if p.suffix.lower() == ".onnx" else resolve_backend(backend)
    if is_official and kind == "onnxruntime":
        kind = "torch"  # the authors' checkpoints have no ONNX file: only PyTorch reads them
    if kind == "onnxruntime":
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such checkpoint")
        return OnnxBackend(onnx_file(p), device=device, operating_point=opts.operating_point, threads=opts.threads)
    _need_torch(f"{p} (backend 'torch')")
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    dev = resolve_device(device)
    try:
        net = open_checkpoint(p, opts.official, device=dev)
    except CheckpointError:
        raise  # the file's own problem, said as such
    except ValueError as err:  # an option that does not fit the file
        raise InferenceError(str(err)) from None
    return TorchBackend(net, device=dev, autocast=opts.autocast, operating_point=opts.operating_point)
