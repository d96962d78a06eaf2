"""Distributed data parallel through ``torchrun``: environment, samplers, reductions.

``torchrun --nproc_per_node N poster-fer train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; without
them a run is a single process. The process group uses NCCL on CUDA and gloo on CPU. A recipe's
``batch_size`` is the GLOBAL batch: each rank takes ``batch_size / world_size``, so a recipe means the same
optimisation on one GPU or eight. Evaluation shards the split without padding (rank r takes samples r, r+N,
...) and gathers the predictions with their indices, so metrics count every sample exactly once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, logs and results."""
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment variables, (0, 1, 0) without them."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device: torch.device, timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group torchrun describes (idempotent); a single process needs no group."""
    rank, world, local = env_world()
    if world <= 1:
        return DistEnv()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, backend=backend)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_sum(values: Sequence[float], env: DistEnv, device: torch.device | None = None) -> list[float]:
    """Sum a few numbers over ranks (loss sums and sample counts) in float64."""
    if not env.distributed:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                     device=device if device is not None and env.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def gather_arrays(arrays: dict[str, np.ndarray], env: DistEnv) -> dict[str, np.ndarray]:
    """Concatenate each named array over ranks (rank order); arrays may differ in length per rank."""
    if not env.distributed:
        return arrays
    parts: list[Any] = [None] * env.world_size
    dist.all_gather_object(parts, arrays)
    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's value of ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ShardSampler(Sampler[int]):
    """Evaluation sharding without padding: rank ``r`` of ``n`` takes indices ``r, r + n, r + 2n, ...``."""

    def __init__(self, length: int, env: DistEnv) -> None:
        self.indices = list(range(env.rank, length, env.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class DistributedWeightedSampler(Sampler[int]):
    """Class-balanced draws (with replacement) split across ranks, reproducible per (seed, epoch).

    Every rank draws the same ``num_samples`` indices with a generator seeded by ``seed + epoch`` and keeps
    its stride of them, the weighted counterpart of ``DistributedSampler`` (call :meth:`set_epoch`).
    """

    def __init__(self, weights: Sequence[float] | np.ndarray, env: DistEnv, num_samples: int | None = None,
                 seed: int = 0) -> None:
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        total = len(self.weights) if num_samples is None else int(num_samples)
        self.num_samples = math.ceil(total / env.world_size)  # per rank
        self.total = self.num_samples * env.world_size
        self.rank, self.world = env.rank, env.world_size
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.total, replacement=True, generator=g)
        return iter(draws[self.rank::self.world].tolist())

    def __len__(self) -> int:
        return self.num_samples


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights 1 / (count of its class): every class is drawn equally often."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    return 1.0 / counts[labels]
