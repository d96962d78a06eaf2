"""ONNX export with a built-in check, and an ONNX Runtime model with the same calling convention as PyTorch.

``export_onnx`` writes a graph with a dynamic batch axis (input ``input`` (B,3,S,S) float32, output ``logits``
(B,C)), embeds poster-fer's metadata record (classes, preprocessing, provenance) in the file's
``metadata_props``, and then runs the file in ONNX Runtime against the PyTorch model: a relative error above
``tolerance`` deletes the file and raises :class:`ExportError`, so an export that exists is one that was
verified. :class:`OnnxRuntimeModel` is what deployment needs: numpy in, logits out, ``.card`` (and the record
as stored, ``.meta``) from the file, no PyTorch import.

The graph outputs the model's raw logits; the calibration temperature (the card's ``temperature``, 1.0 when the
model stores none) travels as metadata, in the record and as its own ``temperature`` entry, and
:class:`~poster_fer.inference.OnnxBackend` divides by it before the softmax exactly as the PyTorch backend
does. Keeping it out of the graph means the export check compares like with like (the PyTorch forward pass
returns raw logits), the ``logits`` output means what its name says, and recalibrating a model changes one
metadata entry, not the graph. Other consumers compute ``softmax(logits / temperature)``.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .card import ModelCard, thaw

__all__ = ["DEFAULT_OPSET", "META_KEY", "ExportError", "OnnxRuntimeModel", "export_onnx"]

META_KEY = "poster_fer_meta"
DEFAULT_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class ExportError(RuntimeError):
    """The exported graph does not compute what the PyTorch model computes (or could not be written)."""


def _rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    denom = float(np.linalg.norm(ref))
    return float(np.linalg.norm(out - ref)) / (denom if denom > 0 else 1.0)


def _metadata(model: Any, extra: dict[str, Any] | None) -> dict[str, Any]:
    from .weights.io import build_metadata

    try:
        return build_metadata(model, **(extra or {}))
    except ValueError as err:
        raise ExportError(f"cannot describe the model for export: {err}") from None


def export_onnx(
    model: Any,
    path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    batch_size: int = 2,
    check_batch_sizes: tuple[int, ...] = (3,),
    tolerance: float = 1e-4,
    optimize: bool = True,
    metadata: dict[str, Any] | None = None,
    sample: np.ndarray | None = None,
    storage: str = "float32",
) -> dict[str, Any]:
    """Export ``model`` to ONNX at ``path`` and verify it in ONNX Runtime; returns a report dict.

    Args:
        model: a poster-fer model (``create_model``/``load_model``/``load_official``), any device.
        path: output ``.onnx`` file (replaced atomically; nothing is left behind on failure).
        opset: ONNX opset.
        batch_size: batch of the tracing example; the batch axis is dynamic regardless.
        check_batch_sizes: further batch sizes run through the exported file to prove the axis is dynamic.
        tolerance: largest accepted ``||ort - torch|| / ||torch||`` on the check batches.
        optimize: export the exact fast paths (BN folding, trivial layers, single resize) instead of the
            eager graph; attention stays explicit (plain MatMul/Softmax nodes every runtime has).
        metadata: extra metadata merged over the model's card (e.g. ``provenance``).
        sample: an optional float32 (B,3,S,S) batch to check on instead of seeded random normals.
        storage: "float16" stores every float32 weight that float16 holds exactly as float16 with a Cast to
            float32 in the graph (values unchanged; weights with BatchNorm folded in mostly stay float32, so a
            float16-saved model's file shrinks to 58-79% of the float32 export); ONNX Runtime folds the casts
            when it loads the file. "float32" (default) keeps the traced initializers.
    """
    import torch

    from .fastpath import FastPaths, optimize_for_inference
    from .weights.preprocessing import Preprocessing

    if storage not in ("float32", "float16"):
        raise ValueError(f"storage must be 'float32' or 'float16', not {storage!r}")
    path, t0 = Path(path), time.perf_counter()
    record = _metadata(model, metadata)  # the stored form, embedded as written
    card = ModelCard.from_meta(record)  # what it says, read once
    size = Preprocessing.from_dict(card.preprocessing).input_size
    model = model.eval()
    cpu_model = model if next(model.parameters()).device.type == "cpu" else _cpu_copy(model)
    graph = (optimize_for_inference(cpu_model, options=FastPaths(fused_attention=False, channels_last=False))
             if optimize else cpu_model)
    example = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))

    def write(tmp: str) -> None:
        _trace_to_onnx(graph, example, tmp, opset)
        _attach_metadata(tmp, record, card, half_storage=storage == "float16")

    checks = _write_checked(path, write, lambda tmp: _verify(cpu_model, tmp, size, (batch_size, *check_batch_sizes),
                                                              sample), tolerance)
    return {
        "path": str(path), "opset": opset, "bytes": path.stat().st_size, "optimized": optimize,
        "input": [INPUT_NAME, ["batch", 3, size, size]], "output": [OUTPUT_NAME, ["batch", len(card.classes)]],
        "checks": checks, "max_rel_error": max(c["rel_error"] for c in checks), "tolerance": tolerance,
        "seconds": round(time.perf_counter() - t0, 2), "model": card.architecture, "storage": storage,
    }


def _write_checked(path: Path, write: Callable[[str], None], check: Callable[[str], list[dict[str, Any]]],
                   tolerance: float) -> list[dict[str, Any]]:
    """``write`` the file to a temporary beside ``path``, ``check`` it, and move it into place only when every
    check's relative error is within ``tolerance``: an export that exists is one that was verified, and a failed
    one leaves nothing behind. Returns the checks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        checks = check(tmp)
        worst = max(c["rel_error"] for c in checks)
        if not worst <= tolerance:  # also catches NaN
            raise ExportError(f"{path}: ONNX Runtime output differs from PyTorch (relative error {worst:.3g} > "
                              f"{tolerance:g}; checks {checks}); the file was not written")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return checks


def _cpu_copy(model: Any) -> Any:
    import copy

    return copy.deepcopy(model).to("cpu")  # the card travels with it (an immutable attribute)


def _trace_to_onnx(graph: Any, example: Any, dest: str, opset: int) -> None:
    """TorchScript-based export: needs only ``onnx`` (the dynamo exporter would add onnxscript)."""
    import torch

    with warnings.catch_warnings():
        # Shape checks in forward() are constants for a fixed input size; only the batch axis varies.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        with torch.no_grad():
            torch.onnx.export(
                graph, (example,), dest, dynamo=False, opset_version=opset, do_constant_folding=True,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )


def _store_float16(proto: Any) -> int:
    """Rewrite float32 initializers that float16 represents exactly as float16 + a Cast node; returns how many.

    Lossless by construction (a value float16 would round is left in float32), so the export check still
    compares the same numbers; small tensors are left alone (a node costs more than the bytes saved)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.size < 64:
            continue
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, f"{name}__float16"))
        casts.append(helper.make_node("Cast", [f"{name}__float16"], [name], to=TensorProto.FLOAT,
                                      name=f"{name}__to_float32"))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return len(casts)


def _attach_metadata(dest: str, record: dict[str, Any], card: ModelCard, half_storage: bool = False) -> None:
    """The stored record (``record``, as meta.json would hold it) and, for consumers without poster-fer, the
    parts they need as entries of their own (read from its ``card``), in the file's ``metadata_props``."""
    import onnx

    from .probabilities import get_temperature

    proto = onnx.load(dest)
    if half_storage:
        _store_float16(proto)
    entries = {
        META_KEY: json.dumps(record, sort_keys=True),
        "classes": json.dumps(list(card.classes)),
        "preprocessing": json.dumps(thaw(card.preprocessing), sort_keys=True),
        "model": str(card.architecture),
        # Written even at 1.0 so a consumer without poster-fer sees that the logits want no scaling.
        "temperature": repr(get_temperature(card)),
    }
    del proto.metadata_props[:]
    for key, value in entries.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "poster-fer"
    onnx.checker.check_model(proto)
    onnx.save(proto, dest)


def _verify(model: Any, onnx_path: str, size: int, batch_sizes: tuple[int, ...],
            sample: np.ndarray | None) -> list[dict[str, Any]]:
    import torch

    runtime = OnnxRuntimeModel(onnx_path)
    rng = torch.Generator().manual_seed(1)
    checks = []
    for b in dict.fromkeys(batch_sizes):  # unique, in order
        if sample is not None:
            x = torch.from_numpy(np.ascontiguousarray(sample[:b], dtype=np.float32))
        else:
            x = torch.randn(b, 3, size, size, generator=rng)
        with torch.no_grad():
            ref = model(x).float().numpy()
        out = runtime(x.numpy())
        if out.shape != ref.shape:
            raise ExportError(f"{onnx_path}: batch {b} gave shape {out.shape}, PyTorch {ref.shape}")
        checks.append({"batch": int(x.shape[0]), "rel_error": _rel_err(out, ref)})
    return checks


def _meta_from_session(session: Any) -> dict[str, Any]:
    """The record a file embeds (else the separate entries an older export wrote), as stored."""
    props = session.get_modelmeta().custom_metadata_map or {}
    if META_KEY in props:
        return json.loads(props[META_KEY])
    return {key: json.loads(props[key]) for key in ("classes", "preprocessing", "temperature") if key in props}


class OnnxRuntimeModel:
    """An exported poster-fer model in ONNX Runtime: ``model(batch) -> logits``; ``model.card`` (the file's
    :class:`~poster_fer.card.ModelCard`) and ``model.meta`` (the record as the file stores it).

    The logits are raw: calibrated probabilities are ``softmax(logits / model.temperature)`` (what
    :class:`~poster_fer.inference.OnnxBackend` computes).

    Args:
        path: the ``.onnx`` file.
        providers: ONNX Runtime execution providers (default: CPU).
        threads: intra-op threads (default: ONNX Runtime's choice, one per core).
    """

    def __init__(self, path: str | os.PathLike[str], providers: list[str] | None = None,
                 threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between runs: ONNX Runtime's threads otherwise spin after each call and take the cores
        # from what runs next in a face pipeline (OpenCV's YuNet): on 2 cores the 16-face photo went from 135 to
        # 158 faces/s with spinning off, the model's own time unchanged (benchmarks/bench_runtime.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for unreadable files
            raise ExportError(f"{self.path}: ONNX Runtime cannot load this file ({err})") from None
        self.meta: dict[str, Any] = _meta_from_session(self.session)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)

    @functools.cached_property
    def card(self) -> ModelCard:
        """The file's card, read from its record once (:class:`~poster_fer.inference.OnnxBackend` checks the
        record first: :func:`poster_fer.weights.checks.parse_metadata`)."""
        return ModelCard.from_meta(self.meta)

    @property
    def classes(self) -> list[str]:
        return list(self.card.classes)

    @property
    def temperature(self) -> float:
        """The calibration temperature the file records (1.0 when none)."""
        from .probabilities import get_temperature

        return get_temperature(self.card)

    @property
    def input_size(self) -> int | None:
        size = self.card.preprocessing.get("input_size")
        return int(size) if size is not None else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """float32 (B, 3, S, S) normalised batch -> float32 (B, C) logits."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.path}: expected a (B, 3, S, S) batch, got shape {tuple(x.shape)}")
        size = self.input_size
        if size is not None and x.shape[2:] != (size, size):
            raise ValueError(f"{self.path}: this model takes {size}x{size} inputs, got {x.shape[2]}x{x.shape[3]}")
        return self.session.run(None, {self.input_name: x})[0]
