"""The Ray engine on a real local multi-node cluster (ray.cluster_utils.Cluster, as Ray's own tests start one: a
head and 2 worker nodes with 1 CPU each): its output equals the single process's, a node removed mid-job still
leaves every input exactly once, and an interrupted job resumes. Skipped with the reason without the [ray] extra."""

from __future__ import annotations

import math

import numpy as np
import pytest

from test_bulk import make_archive

ray = pytest.importorskip("ray", reason="the Ray engine needs the [ray] extra: pip install 'poster-fer[ray]'")
pq = pytest.importorskip("pyarrow.parquet")

pytestmark = pytest.mark.slow

STORE = 100 * 2**20  # object store per node: the crops in flight are small


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": STORE})
    workers = [c.add_node(num_cpus=1, object_store_memory=STORE) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield c, workers
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Images, a corrupt file, a zero-byte file and 2 videos, with the single process's Parquet output."""
    from poster_fer.bulk import label

    root = tmp_path_factory.mktemp("ray")
    data = make_archive(root / "in", images=12, videos=2, frames=8, bad=True)
    label([data], root / "local.parquet", engine="local", backend="onnxruntime", progress=False)
    return data, pq.read_table(root / "local.parquet").to_pylist()


def by_key(rows: list[dict]) -> dict:
    out = {}
    for r in rows:
        k = (r["source"], r["segment"], r["frame"], r["face"])
        assert k not in out, f"row {k} written twice"
        out[k] = r
    return out


def assert_same_rows(got: list[dict], expected: list[dict], tol: float = 1e-5) -> None:
    a, b = by_key(got), by_key(expected)
    assert a.keys() == b.keys()
    for k, row in b.items():
        for col, value in row.items():
            other = a[k][col]
            if isinstance(value, float) and not (value is None or math.isnan(value)):
                assert abs(other - value) <= tol, (k, col, other, value)
            elif isinstance(value, list):
                assert np.allclose(np.asarray(value, float), np.asarray(other, float), atol=1e-9), (k, col)
            else:
                assert other == value, (k, col, other, value)


def test_ray_output_equals_the_single_process(cluster, archive, tmp_path):
    from poster_fer.bulk import label

    data, expected = archive
    res = label([data], tmp_path / "out", engine="ray", progress=False)
    assert res.rows == {"ok": 28, "error": 2} and res.inputs == 16 and res.skipped == 0
    assert sorted(src for src, _ in res.failures) == sorted([str(data / "corrupt.jpg"), str(data / "empty.png")])
    assert_same_rows(pq.read_table(tmp_path / "out").to_pylist(), expected)
    import pandas as pd

    assert len(pd.read_parquet(tmp_path / "out")) == 30  # the parts read as one dataset


def test_a_node_removed_mid_job_leaves_every_input_exactly_once(cluster, archive, tmp_path):
    from poster_fer.bulk import label

    c, workers = cluster
    data, expected = archive
    removed = []

    def kill_a_node(n: int) -> None:
        if n == 2 and not removed:
            c.remove_node(workers[-1], allow_graceful=False)
            removed.append(workers.pop())

    label([data], tmp_path / "out", engine="ray", progress=False, on_input=kill_a_node)
    assert removed, "the job ended before the node could be removed"
    assert_same_rows(pq.read_table(tmp_path / "out").to_pylist(), expected)


def test_an_interrupted_job_resumes_and_long_videos_are_cut_into_segments(cluster, tmp_path):
    from poster_fer.bulk import label

    data = make_archive(tmp_path / "in", images=3, videos=1, frames=25)

    def stop(n: int) -> None:
        if n == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        label([data], tmp_path / "out", engine="ray", progress=False, segment_frames=10, on_input=stop)
    first = pq.read_table(tmp_path / "out").to_pylist()
    assert 0 < len({(r["source"], r["segment"]) for r in first}) < 6
    res = label([data], tmp_path / "out", engine="ray", progress=False, segment_frames=10, resume=True)
    assert res.skipped == 2 and res.inputs == 4
    rows = pq.read_table(tmp_path / "out").to_pylist()
    by_key(rows)  # nothing twice
    video = sorted((r["segment"], r["frame"], r["track"]) for r in rows if r["frame"] is not None)
    assert [s for s, _, _ in video] == [0] * 10 + [1] * 10 + [2] * 5
    assert [f for _, f, _ in video] == list(range(25))
    for segment in (0, 1, 2):  # each segment has its own tracker: track ids start again at 0
        assert min(t for s, _, t in video if s == segment) == 0
