"""The Ray Data engine: the predict pipeline spread over every core of a machine or the nodes of a cluster.

Two stages, as the work divides:

1. **decode, detect, align** (CPU, a pool of actors that each load the detector once): one input per call,
   an image or one frame-range segment of a video; out come the faces (box, landmarks, score) and their aligned
   crops, or the error.
2. **classify** (a fixed pool of stateful actors, each loading the model once: ONNX Runtime by default,
   PyTorch with ``backend="torch"``, one GPU each where the cluster has GPUs): the crops of several inputs in
   batches of ``batch_size`` faces, then each input's records through the same functions the single process
   uses (:func:`poster_fer.inference.job.image_records`, :func:`~poster_fer.inference.job.frame_records`).

The driver reads the results as they stream in and writes Parquet parts (:class:`~poster_fer.bulk.parquet.
PartStore`). Every result row carries how many rows its input has; an input is written once all of them have
arrived, and only if it is not written yet: when Ray retries a task after a worker or node is lost, a repeated
input is dropped, so the output holds every input exactly once. A long video is cut into segments of
``segment_frames`` frames so it spreads over the cluster; each segment has its own tracker, so track ids (and
the smoothing of probabilities along a track) start afresh at a segment's first frame: a track is identified by
(source, segment, track).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..inference.job import JobOptions
from ..inference.sources import Source
from ..naming import warn_deprecated
from .parquet import PartStore, check_same_weights, row_keys
from .table import records_to_table, schema

__all__ = ["RayOptions", "RayPlan", "plan_items", "pool_sizes", "run_ray"]

ROWS_COLUMN = "_item_rows"  # rows the input produced in all: the driver writes an input once it has them all
STAGE1 = pa.schema([("source", pa.string()), ("segment", pa.int32()), ("kind", pa.string()),
                    ("payload", pa.string()), ("crops", pa.binary()), ("crop_shape", pa.list_(pa.int32()))])


@dataclass
class RayOptions:
    """How the job spreads over Ray. None picks from the cluster's resources (see :func:`pool_sizes`)."""

    address: str | None = None  # None: start Ray on this machine with all its cores; "auto" or "ray://...": join
    actors: int | None = None  # classify actors (fixed pool)
    detect_actors: int | None = None  # decode/detect/align actors
    items_per_call: int = 8  # inputs handed to one classify call (their faces are batched by batch_size)
    segment_frames: int = 1500  # frames per video segment (0: whole videos)
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs and the backend is PyTorch
    rows_per_part: int = 50_000
    seconds_per_part: float = 30.0


@dataclass
class RayPlan:
    """Everything a Ray job needs besides its inputs and output, built once from :func:`poster_fer.bulk.label`'s
    or the command line's arguments. Why one object: the recognizer's keywords, the per-input work and the pool
    settings travel together from the caller to the driver and on to each actor."""

    recognizer: dict[str, Any]  # Recognizer.from_checkpoint keywords, as every actor loads the model
    job: JobOptions  # detect, every, max_frames, ema; progress: the driver's bar (None: when stderr is a terminal)
    classes: list[str]
    metadata: dict[str, Any]  # the output's run metadata (poster_fer.bulk.run_metadata)
    options: RayOptions = field(default_factory=RayOptions)
    resume: bool = False  # skip the inputs the output already holds whole

    @property
    def on_gpu(self) -> bool:
        """Whether the classify actors want GPUs: PyTorch can use them, ONNX Runtime here runs on CPUs."""
        return self.recognizer.get("backend") == "torch"


#: run_ray's arguments after ``recognizer_kwargs`` before :class:`RayPlan`, in their positional order.
_LEGACY_ARGS = ("job", "classes", "metadata", "opts", "resume", "progress")


def _legacy_plan(recognizer: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> RayPlan:
    """The :class:`RayPlan` of the call form before it, with a DeprecationWarning at the caller's line."""
    if len(args) > len(_LEGACY_ARGS):
        raise TypeError(f"run_ray() takes at most {len(_LEGACY_ARGS) + 3} positional arguments")
    values = dict(zip(_LEGACY_ARGS, args, strict=False))
    twice, unknown = sorted(set(values) & set(kwargs)), sorted(set(kwargs) - set(_LEGACY_ARGS))
    if twice or unknown:
        raise TypeError(f"run_ray() got {'multiple values for' if twice else 'unexpected'} argument(s) "
                        f"{twice or unknown}")
    warn_deprecated("run_ray(sources, output, recognizer_kwargs, job, classes, metadata, opts, ...) is deprecated: "
                    "pass run_ray(sources, output, RayPlan(...))")
    values.update(kwargs)
    job = values["job"]
    if not isinstance(job, JobOptions):
        job = JobOptions(**job, progress=values.get("progress"))
    return RayPlan(dict(recognizer), job, list(values["classes"]), dict(values["metadata"]),
                   values.get("opts") or RayOptions(), bool(values.get("resume", False)))


@dataclass
class RayResult:
    """What a Ray job did: rows by status, inputs written and skipped, the failures (name, reason)."""

    rows: Counter = field(default_factory=Counter)
    inputs: int = 0
    items: int = 0
    skipped: int = 0
    duplicates: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    actors: int = 0
    detect_actors: int = 0


def _frame_count(path: Path) -> int | None:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        n = cap.get(cv2.CAP_PROP_FRAME_COUNT) if cap.isOpened() else 0
    finally:
        cap.release()
    return int(n) if n and 0 < n < 1e9 else None


def plan_items(sources: list[Source], segment_frames: int, every: int = 1,
               max_frames: int | None = None) -> list[dict[str, Any]]:
    """One work item per image and per video segment: ``{source, path, kind, segment, start, stop}``. A video
    whose length its header does not give (or ``segment_frames`` 0) is one segment."""
    items = []
    for src in sources:
        if src.kind == "webcam":
            raise ValueError("the Ray engine labels files; a webcam runs in the single process (no --engine ray)")
        base = {"source": src.name, "path": str(src.path), "kind": src.kind, "segment": None, "start": 0,
                "stop": None}
        if src.kind == "image":
            items.append(base)
            continue
        count = _frame_count(Path(src.path)) if segment_frames else None
        if count is not None and max_frames is not None:
            count = min(count, max_frames * every)
        if not count or count <= segment_frames:
            items.append({**base, "segment": 0, "stop": count if max_frames is not None else None})
            continue
        step = math.ceil(segment_frames / every) * every  # segments start on kept frames
        for k, start in enumerate(range(0, count, step)):
            stop = min(start + step, count)
            items.append({**base, "segment": k, "start": start,
                          "stop": None if stop == count and max_frames is None else stop})
    return items


def _face_json(face: Any) -> dict[str, Any] | None:
    from ..inference.recognizer import WholeImage

    if face is None:
        return None
    if isinstance(face, WholeImage):
        return {"whole_image": True}
    return {"box": [float(v) for v in face.box], "score": float(face.score),
            "landmarks": np.asarray(face.landmarks).tolist(), "est": bool(face.landmarks_estimated)}


class DetectStage:
    """Stage 1 actor: decode, detect and align (the detector and preprocessing loaded once)."""

    def __init__(self, recognizer_kwargs: dict[str, Any], job: JobOptions) -> None:
        import cv2

        from ..inference import Recognizer

        cv2.setNumThreads(1)  # one thread per actor: the pool, not each actor, spreads over the cores
        self.rec = Recognizer.from_checkpoint(**{**recognizer_kwargs, "threads": 1})
        self.job = job

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([self.item(it) for it in batch.to_pylist()], schema=STAGE1)

    def _faces(self, rgb: np.ndarray) -> tuple[dict[str, Any], list[np.ndarray]]:
        faces, crops, dropped = self.rec.faces_and_crops(rgb, self.job.detect)
        h, w = rgb.shape[:2]
        return {"size": [w, h], "dropped": dropped, "faces": [_face_json(f) for f in faces]}, crops

    def item(self, it: dict[str, Any]) -> dict[str, Any]:
        from ..inference.job import reason_for
        from ..inference.recognizer import INPUT_ERRORS
        from ..inference.sources import VideoError, VideoReader

        crops: list[np.ndarray] = []
        payload: dict[str, Any]
        if it["kind"] == "image":
            try:
                payload, crops = self._faces(self.rec.load(it["path"]))
            except INPUT_ERRORS as err:
                payload = {"error": reason_for(err, it["source"])}
        else:
            try:
                reader = VideoReader(it["path"], every=self.job.every, max_pixels=self.rec.max_pixels,
                                     start=it["start"], stop=it["stop"])
            except VideoError as err:
                payload = {"open_error": str(err)}
            else:
                frames = []
                for idx, rgb in reader:
                    try:
                        entry, found = self._faces(rgb)
                    except INPUT_ERRORS as err:
                        entry, found = {"error": reason_for(err, it["source"])}, []
                    frames.append({"idx": idx, **entry})
                    crops += found
                payload = {"frames": frames, "fps": reader.fps, "frames_read": reader.frames_read,
                           "frame_count": reader.frame_count, "ended_early": reader.ended_early}
        arr = np.stack(crops) if crops else np.zeros((0, 0, 0, 3), np.uint8)
        return {"source": it["source"], "segment": it["segment"], "kind": it["kind"], "payload": json.dumps(payload),
                "crops": np.ascontiguousarray(arr, dtype=np.uint8).tobytes(), "crop_shape": list(arr.shape)}


class ClassifyStage:
    """Stage 2 actor: classify every crop of a call's inputs (the model loaded once), then their records."""

    def __init__(self, recognizer_kwargs: dict[str, Any], job: JobOptions, table_schema: pa.Schema) -> None:
        from ..inference import Recognizer

        if recognizer_kwargs.get("backend") == "torch" and recognizer_kwargs.get("device") != "cuda":
            import torch

            torch.set_num_threads(1)
        self.rec = Recognizer.from_checkpoint(**{**recognizer_kwargs, "detector": None, "threads": 1})
        self.job = job
        self.schema = table_schema

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = batch.to_pylist()
        crops = [np.frombuffer(it["crops"], np.uint8).reshape(it["crop_shape"]) for it in items]
        flat = [c for arr in crops for c in arr]
        probs = self.rec.classify(flat) if flat else np.zeros((0, len(self.rec.classes)), np.float32)
        tables, i = [], 0
        for it, arr in zip(items, crops, strict=True):
            records = self.records(it, json.loads(it["payload"]), probs[i:i + len(arr)])
            i += len(arr)
            table = records_to_table(records, self.rec.classes, it["segment"], self.schema)
            tables.append(table.append_column(ROWS_COLUMN, pa.array([table.num_rows] * table.num_rows, pa.int32())))
        return pa.concat_tables(tables)

    def _prediction(self, key: Any, entry: dict[str, Any], probs: np.ndarray) -> Any:
        from ..faces import Face
        from ..inference.recognizer import ImagePrediction, WholeImage

        if "error" in entry:
            return ImagePrediction(key, [], error=ValueError(entry["error"]))
        faces = []
        for k, f in enumerate(entry["faces"]):
            face: Any = None
            if f is not None and "whole_image" in f:
                face = WholeImage()
            elif f is not None:
                face = Face(box=tuple(f["box"]), landmarks=np.asarray(f["landmarks"]), score=f["score"],
                            landmarks_estimated=f["est"])
            faces.append(self.rec.result(face, probs[k], tuple(entry["size"])))
        return ImagePrediction(key, faces, dropped=entry["dropped"])

    def records(self, it: dict[str, Any], payload: dict[str, Any], probs: np.ndarray) -> list[dict[str, Any]]:
        from ..inference.job import frame_records, image_records, new_tracker, video_end_record
        from ..inference.records import error_record

        source = it["source"]
        if it["kind"] == "image":
            return image_records(source, self._prediction(0, payload, probs))
        if "open_error" in payload:
            return [error_record(source, payload["open_error"])]
        tracker = new_tracker(self.job.ema, self.job.every)
        out, used = [], 0
        for entry in payload["frames"]:
            n = len(entry.get("faces", []))
            pred = self._prediction(entry["idx"], entry, probs[used:used + n])
            used += n
            out += frame_records(source, pred, tracker, self.rec.classes, payload["fps"])[0]
        end = video_end_record(source, len(payload["frames"]), payload["ended_early"], payload["frames_read"],
                               payload["frame_count"])
        return out + ([] if end is None else [end])


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    import logging

    # Ray Data's actor pools restart lost actors and retry their tasks by default (max_restarts and
    # max_task_retries -1), which is what a lost worker or node needs; the driver drops repeated inputs.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             configure_logging=True)


#: CPU a classify actor reserves without a GPU: the model is light beside decoding and YuNet (about a tenth of
#: a face's time on a CPU), so a whole core each would leave cores idle on a small machine.
CLASSIFY_CPUS = 0.5


def pool_sizes(opts: RayOptions, use_gpu: bool, cpus: int, gpus: int) -> tuple[int, float, int, float, float]:
    """(classify actors, CPUs each, detect actors, CPUs each, GPUs per classify actor). Without GPUs one classify
    actor per 4 CPUs at half a CPU each; the detect pool gets the rest, whole CPUs where there are enough (on 2
    cores: one classify actor at 0.5 and two detect actors at 0.75). With GPUs and PyTorch: one classify actor
    per GPU, and every CPU for the detect pool."""
    gpu_each = opts.gpus_per_actor if opts.gpus_per_actor is not None else (1.0 if use_gpu and gpus else 0.0)
    actors = opts.actors or (max(1, int(gpus // gpu_each)) if gpu_each else max(1, cpus // 4))
    classify_cpus = 0.0 if gpu_each else CLASSIFY_CPUS
    left = max(cpus - actors * classify_cpus, 0.5)
    detect = opts.detect_actors or max(1, round(left))
    return actors, classify_cpus, detect, min(1.0, left / detect), gpu_each


def run_ray(sources: list[Source], output: Path, plan: RayPlan | dict[str, Any], *legacy: Any,
            on_input: Callable[[int], None] | None = None, **legacy_kw: Any) -> RayResult:
    """Label ``sources`` on Ray into Parquet parts under ``output`` as ``plan`` says; see the module docstring.
    ``on_input(n)`` is called after each input is written. The form before :class:`RayPlan`
    (``recognizer_kwargs, job, classes, metadata, opts, resume=, progress=``) still works and warns."""
    if not isinstance(plan, RayPlan):
        plan = _legacy_plan(plan, legacy, legacy_kw)
    elif legacy or legacy_kw:
        raise TypeError("run_ray(sources, output, plan, on_input=None): the plan holds everything else")
    started = time.monotonic()
    result = RayResult()
    opts = plan.options
    items = plan_items(sources, opts.segment_frames, plan.job.every, plan.job.max_frames)
    table_schema = schema(plan.classes, plan.metadata)
    store = PartStore(output, table_schema, opts.rows_per_part, opts.seconds_per_part)
    try:
        done = _done_keys(store, plan, output)
        todo = [it for it in items if (it["source"], it["segment"]) not in done]
        result.skipped, result.items = len(items) - len(todo), len(todo)
        ds = _pipeline(todo, plan, table_schema, result)
        if ds is not None:
            _drain(ds, store, done, result, _bar(len(todo), plan.job.progress), on_input)
    finally:
        store.close()
    result.seconds = time.monotonic() - started
    return result


def _done_keys(store: PartStore, plan: RayPlan, output: Path) -> set:
    """The inputs a resumed output already holds (refusing one another model wrote); none without resume."""
    if not plan.resume:
        return set()
    earlier = store.metadata()
    if earlier is not None:
        check_same_weights(earlier, plan.metadata, output)
    return store.done_keys()


def _pipeline(todo: list[dict[str, Any]], plan: RayPlan, table_schema: pa.Schema, result: RayResult) -> Any:
    """Start (or join) Ray, size the two actor pools (noted in ``result``) and chain the stages over ``todo``:
    the Ray dataset of classified rows, None when there is nothing to do."""
    import ray
    import ray.data as rd

    _init_ray(plan.options.address)
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    actors, classify_cpus, detect, detect_cpus, gpu_each = pool_sizes(plan.options, plan.on_gpu, cpus, gpus)
    result.actors, result.detect_actors = actors, detect
    recognizer_kwargs = {**plan.recognizer, "device": "cuda"} if gpu_each else plan.recognizer
    ctx = rd.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if not todo:
        return None
    job = plan.job
    ds = rd.from_items(todo, override_num_blocks=min(len(todo), 64 * (actors + detect)))
    ds = ds.map_batches(DetectStage, batch_size=1, batch_format="pyarrow", num_cpus=detect_cpus,
                        compute=rd.ActorPoolStrategy(min_size=1, max_size=detect),
                        fn_constructor_kwargs={"recognizer_kwargs": recognizer_kwargs, "job": job})
    return ds.map_batches(ClassifyStage, batch_size=plan.options.items_per_call, batch_format="pyarrow",
                          num_cpus=classify_cpus, num_gpus=gpu_each or None, compute=rd.ActorPoolStrategy(size=actors),
                          fn_constructor_kwargs={"recognizer_kwargs": recognizer_kwargs, "job": job,
                                                 "table_schema": table_schema})


def _bar(total: int, progress: bool | None) -> Any:
    """The driver's progress bar over inputs (``progress`` None: shown when stderr is a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="input", desc="inputs", disable=None if progress is None else not progress,
                leave=False, dynamic_ncols=True)


def _drain(ds: Any, store: PartStore, done: set, result: RayResult, bar: Any,
           on_input: Callable[[int], None] | None) -> None:
    """Read the classified rows as they stream in and write each input once, whole."""
    pending: dict[tuple[str, int | None], list[pa.Table]] = {}
    t0, faces = time.monotonic(), 0
    with bar:
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
            starts = {}
            for row, key in enumerate(row_keys(block)):
                starts.setdefault(key, []).append(row)
            for key, rows in starts.items():
                part = block.take(pa.array(rows))
                pending.setdefault(key, []).append(part)
                have = sum(t.num_rows for t in pending[key])
                if have < part.column(ROWS_COLUMN)[0].as_py():
                    continue
                table = pa.concat_tables(pending.pop(key)).drop_columns([ROWS_COLUMN])
                if key in done:  # a retried task delivered this input again
                    result.duplicates += 1
                    continue
                done.add(key)
                store.add(table)
                result.inputs += 1
                statuses = table.column("status").to_pylist()
                result.rows.update(statuses)
                faces += statuses.count("ok")
                for status, err in zip(statuses, table.column("error").to_pylist(), strict=True):
                    if status == "error":
                        result.failures.append((key[0], err))
                bar.update(1)
                bar.set_postfix_str(f"{faces / max(time.monotonic() - t0, 1e-9):.1f} faces/s", refresh=False)
                if on_input is not None:
                    on_input(result.inputs)
