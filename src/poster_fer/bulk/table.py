"""Prediction records as an Arrow table: the Parquet schema of ``poster-fer predict --output X.parquet`` and of
the Ray engine's parts.

One row per record (:mod:`poster_fer.inference.records`), typed, so millions of rows can be filtered and grouped
in pandas, pyarrow or DuckDB without parsing JSON:

=====================  ==================================  ==============================================
column                 type                                meaning
=====================  ==================================  ==============================================
``source``             string                              the input as given
``segment``            int32                               videos: the frame-range segment (0 for a whole
                                                           video); null for images
``frame``, ``time``    int64, float64                      frame index and seconds; null for images
``track``              int32                               track id, unique within (source, segment)
``face``               int32                               face index in its image or frame
``status``, ``error``  string, string                      "ok" / "no_face" / "error", and why
``box``                fixed_size_list<float64>[4]         x, y, w, h in the input's pixels
``score``              float32                             detector confidence
``landmarks``          fixed_size_list<list<float64>[2]>[5] 5 (x, y) points, YuNet order
``landmarks_estimated`` bool                               Haar only guessed the landmarks
``label``              string                              the predicted class
``confidence``         float32                             its probability
``p_<class>``          float32, one per class              calibrated probabilities (smoothed on a track)
``raw_p_<class>``      float32, one per class              videos: the frame's own probabilities
``crop``               string                              path of the saved crop (``--save-crops``)
``detection``          string                              "detector", "whole_image" or "given"
=====================  ==================================  ==============================================

The file's key-value metadata (key ``poster_fer``, a JSON object) names the weights (name, file, sha256), the
operating point, the classes, the poster-fer version, the engine and the command that wrote it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

__all__ = ["METADATA_KEY", "read_run_metadata", "records_to_table", "schema"]

METADATA_KEY = b"poster_fer"


def schema(classes: Sequence[str], metadata: Mapping[str, Any] | None = None) -> pa.Schema:
    """The table's columns for a model with these classes; ``metadata`` goes under :data:`METADATA_KEY`."""
    fields = [
        pa.field("source", pa.string(), nullable=False),
        pa.field("segment", pa.int32()),
        pa.field("frame", pa.int64()),
        pa.field("time", pa.float64()),
        pa.field("track", pa.int32()),
        pa.field("face", pa.int32()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("box", pa.list_(pa.float64(), 4)),
        pa.field("score", pa.float32()),
        pa.field("landmarks", pa.list_(pa.list_(pa.float64(), 2), 5)),
        pa.field("landmarks_estimated", pa.bool_()),
        pa.field("label", pa.string()),
        pa.field("confidence", pa.float32()),
        *(pa.field(f"p_{c}", pa.float32()) for c in classes),
        *(pa.field(f"raw_p_{c}", pa.float32()) for c in classes),
        pa.field("crop", pa.string()),
        pa.field("detection", pa.string()),
    ]
    meta = None if metadata is None else {METADATA_KEY: json.dumps(dict(metadata), sort_keys=True).encode()}
    return pa.schema(fields, metadata=meta)


def records_to_table(records: Sequence[Mapping[str, Any]], classes: Sequence[str], segment: int | None,
                     table_schema: pa.Schema | None = None) -> pa.Table:
    """The rows of one input (all of ``segment``) as a table of :func:`schema`."""
    sch = table_schema if table_schema is not None else schema(classes)
    cols: dict[str, list[Any]] = {name: [] for name in sch.names}
    for rec in records:
        cols["source"].append(rec["source"])
        cols["segment"].append(segment)
        for key in ("frame", "time", "track", "face", "status", "error", "box", "score", "landmarks",
                    "landmarks_estimated", "label", "confidence", "crop", "detection"):
            cols[key].append(rec.get(key))
        scores = rec.get("scores") or {}
        raw = rec.get("raw_scores") or {}
        for c in classes:
            cols[f"p_{c}"].append(scores.get(c))
            cols[f"raw_p_{c}"].append(raw.get(c))
    return pa.table(cols, schema=sch)


def read_run_metadata(schema_metadata: Mapping[bytes, bytes] | None) -> dict[str, Any]:
    """The :data:`METADATA_KEY` object of a Parquet file's or schema's key-value metadata ({} when absent): the
    output's record of its run, not a model's description (that is the model card)."""
    if not schema_metadata or METADATA_KEY not in schema_metadata:
        return {}
    return json.loads(schema_metadata[METADATA_KEY].decode())
