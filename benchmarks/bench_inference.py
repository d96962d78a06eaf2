"""Run the poster-fer benchmark harness (``poster-fer bench``) from a checkout, installed or not.

Same options as ``poster-fer bench`` (see ``--help``). Works with only PyTorch present: on a bare GPU machine
(``PYTHONPATH=src python3 benchmarks/bench_inference.py --device cuda ...``) a missing ``safetensors`` is
replaced by a stub, since the benchmark neither reads nor writes weight files (its weights come from the parity
recipe or a seeded initialisation).

The committed CPU result was produced with::

    python benchmarks/bench_inference.py --model poster_v1 --batch-sizes 1,32 --threads 2 \\
        --variants reference,eager,sdpa,fold_bn,channels_last,fp32_opt,bf16,onnxruntime,compile \\
        --agreement-images 256 --train --out benchmarks/results/bench_cpu_poster_v1.json
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _stub_safetensors() -> None:
    """Let ``import poster_fer`` succeed without safetensors (only weight-file I/O needs it)."""
    if importlib.util.find_spec("safetensors") is not None:
        return

    class SafetensorError(Exception):
        pass

    def unavailable(*_args, **_kwargs):
        raise ImportError("safetensors is not installed on this machine")

    top = types.ModuleType("safetensors")
    top.SafetensorError, top.safe_open = SafetensorError, unavailable
    sub = types.ModuleType("safetensors.torch")
    sub.save_file = sub.load_file = sub.save = sub.load = unavailable
    top.torch = sub
    sys.modules["safetensors"], sys.modules["safetensors.torch"] = top, sub
    print("[bench] safetensors not installed: using a stub (no weight files are read or written)",
          file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    if importlib.util.find_spec("poster_fer") is None:
        sys.path.insert(0, str(ROOT / "src"))
    _stub_safetensors()
    from poster_fer.commands.bench import build_bench_parser, run

    args = build_bench_parser().parse_args(argv)
    return run(args, prog="python benchmarks/bench_inference.py")


if __name__ == "__main__":
    sys.exit(main())
