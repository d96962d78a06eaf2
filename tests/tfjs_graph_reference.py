"""A small interpreter of TF.js graph models, for tests: runs the graph node by node as the JSON describes it.

It is the independent reference for the ArcFace MobileFaceNet port: it knows nothing about the network's
layout (stages, residuals, activations), only the semantics of each TF op, so a wiring or padding mistake in the
hand-written module shows up as a difference.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from poster_fer.weights.face_backbones import read_tfjs_weights


def _pad_same(x: torch.Tensor, kh: int, kw: int, sh: int, sw: int) -> torch.Tensor:
    def amount(n: int, k: int, s: int) -> tuple[int, int]:
        total = max((-(-n // s) - 1) * s + k - n, 0)
        return total // 2, total - total // 2

    top, bottom = amount(x.shape[2], kh, sh)
    left, right = amount(x.shape[3], kw, sw)
    return F.pad(x, (left, right, top, bottom))


def run_graph(json_path: str | Path, image_nhwc: np.ndarray, output: str = "embeddings") -> np.ndarray:
    """Evaluate ``output`` for a float32 NHWC input fed to the graph's single placeholder."""
    json_path = Path(json_path)
    model = json.loads(json_path.read_text())
    blob = b"".join((json_path.parent / p).read_bytes() for g in model["weightsManifest"] for p in g["paths"])
    consts = {k: torch.from_numpy(v) for k, v in read_tfjs_weights(model, blob).items()}
    nodes = {n["name"]: n for n in model["modelTopology"]["node"]}
    values: dict[str, torch.Tensor] = {}

    def attr_ints(node: dict, key: str) -> list[int]:
        return [int(i) for i in node.get("attr", {}).get(key, {}).get("list", {}).get("i", [])]

    def fused_ops(node: dict) -> list[str]:
        return [base64.b64decode(s).decode() for s in node.get("attr", {}).get("fused_ops", {}).get("list", {})
                .get("s", [])]

    def padding(node: dict) -> str:
        return base64.b64decode(node["attr"]["padding"]["s"]).decode()

    def ev(name: str) -> torch.Tensor:
        name = name.split(":")[0]
        if name in values:
            return values[name]
        node = nodes[name]
        op, ins = node["op"], node.get("input", [])
        if op == "Const":
            out = consts[name]
        elif op == "Placeholder":
            out = torch.from_numpy(image_nhwc).permute(0, 3, 1, 2).double()  # interpreter works in NCHW
        elif op in ("_FusedConv2D", "FusedDepthwiseConv2dNative"):
            x, w, b = ev(ins[0]), ev(ins[1]).double(), ev(ins[2]).double()
            _, sh, sw, _ = attr_ints(node, "strides")
            kh, kw = w.shape[0], w.shape[1]
            if padding(node) == "SAME":
                x = _pad_same(x, kh, kw, sh, sw)
            if op == "_FusedConv2D":
                out = F.conv2d(x, w.permute(3, 2, 0, 1), stride=(sh, sw))
            else:
                out = F.conv2d(x, w.permute(2, 3, 0, 1).reshape(-1, 1, kh, kw), stride=(sh, sw), groups=x.shape[1])
            ops = fused_ops(node)
            if ops[0] != "BiasAdd":
                raise NotImplementedError(ops)
            out = out + b.view(1, -1, 1, 1)
            for extra in ops[1:]:
                if extra != "Relu":
                    raise NotImplementedError(extra)
                out = torch.relu(out)
        elif op == "Relu":
            out = torch.relu(ev(ins[0]))
        elif op == "Abs":
            out = ev(ins[0]).abs()
        elif op in ("Sub", "Mul", "Add", "Maximum"):
            a, b = ev(ins[0]), ev(ins[1]).double()
            if a.dim() == 4 and b.dim() == 1:
                b = b.view(1, -1, 1, 1)
            elif b.dim() == 4 and a.dim() == 1:
                a = a.view(1, -1, 1, 1)
            out = {"Sub": torch.sub, "Mul": torch.mul, "Add": torch.add, "Maximum": torch.maximum}[op](a, b)
        elif op == "Squeeze":
            out = ev(ins[0]).flatten(1)
        elif op == "Square":
            out = ev(ins[0]) ** 2
        elif op == "Sum":
            out = ev(ins[0]).sum(1, keepdim=True)  # reduction axis 1 (checked by the caller's shapes)
        elif op == "Rsqrt":
            out = torch.rsqrt(ev(ins[0]))
        elif op == "Identity":
            out = ev(ins[0])
        else:
            raise NotImplementedError(f"{name}: op {op}")
        values[name] = out
        return out

    out = ev(output)
    return (out.permute(0, 2, 3, 1) if out.dim() == 4 else out).float().numpy()
