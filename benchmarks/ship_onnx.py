"""Give every shipped model its ONNX file for the torch-free runtime, checked on real faces, and record it.

For each weight set that ships (``poster_fer.list_pretrained()``, or the names given), writes
``poster_fer/pretrained/<name>/model.onnx`` (eager graph, float16 storage: the same numbers as the float16
weights) and adds its ``onnx`` entry (file, sha256, size, opset, the largest calibrated-probability difference
from PyTorch) to ``records.json`` through :func:`poster_fer_train.release.ship_onnx`. The comparison batch is the
first ``--faces`` FER+ test faces, preprocessed as each model's record says; a file that differs by more than
``--tolerance`` or in any top-1 label is deleted and the script fails.

    python benchmarks/ship_onnx.py [NAME ...] [--faces 256]
"""

from __future__ import annotations

import argparse
import sys

from bench_runtime import fer_test_crops  # this folder is on sys.path (scripts run from it)

from poster_fer.hub import list_pretrained
from poster_fer.weights import Preprocessing, get_weights
from poster_fer_train.release import ship_onnx


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="weight sets (default: every shipped one)")
    p.add_argument("--faces", type=int, default=256, help="FER+ test faces to compare on (default 256)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest probability difference accepted")
    args = p.parse_args(argv)
    crops = fer_test_crops(args.faces)
    for name in args.names or list_pretrained():
        prep = Preprocessing.from_dict(get_weights(name).to_dict()["preprocessing"])
        sample = prep.batch([prep.prepare_crop(c) for c in crops])
        entry = ship_onnx(name, sample=sample, tolerance=args.tolerance)
        print(f"{name}: {entry['file']} {entry['bytes'] / 2**20:.2f} MiB, max |dp| {entry['max_abs_prob_diff']:.2e} "
              f"on {entry['checked_on']} faces", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
