"""Figures for evaluation and training: confusion matrices, t-SNE of features, training curves, reliability.

matplotlib and scikit-learn are optional (the ``analysis`` extra), so they are imported only inside the
functions that need them. Figures are drawn on a bare :class:`matplotlib.figure.Figure` rendered by Agg,
which never touches pyplot's global state or the user's chosen backend and works on headless machines.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .metrics import row_normalised
from .options import legacy_options, positional_settings

__all__ = ["TsneOptions", "plot_confusion", "plot_curves", "plot_reliability", "tsne_subsample_indices", "write_tsne"]

_ANALYSIS_HINT = "install the analysis extra: pip install 'poster-fer[analysis]'"


def new_figure(width: float, height: float) -> Any:
    """A standalone Agg figure (no pyplot), with a clear message when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"plotting needs matplotlib; {_ANALYSIS_HINT}") from exc
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, out_path: str | Path, dpi: int = 150) -> Path:
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _class_colours(num_classes: int) -> list[Any]:
    """Distinct colours: tab10 up to ten classes, tab20 up to twenty, then a continuous map."""
    from matplotlib import colormaps

    if num_classes <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(num_classes)]
    if num_classes <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(num_classes)]
    cmap = colormaps["turbo"]
    return [cmap(i / max(1, num_classes - 1)) for i in range(num_classes)]


def _draw_matrix(ax: Any, values: np.ndarray, labels: list[str], fmt: str, title: str, vmax: float) -> Any:
    """One annotated heat map; text switches to white on dark cells so every number stays legible."""
    c = len(labels)
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax if vmax > 0 else 1.0)
    ax.set_title(title)
    ax.set_xticks(range(c), labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(c), labels)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    font = max(5.0, min(10.0, 80.0 / c))
    threshold = 0.5 * (vmax if vmax > 0 else 1.0)
    for i in range(c):
        for j in range(c):
            v = values[i, j]
            ax.text(
                j,
                i,
                format(v, fmt),
                ha="center",
                va="center",
                fontsize=font,
                color="white" if v > threshold else "black",
            )
    return image


def plot_confusion(
    conf: ArrayLike, class_names: Sequence[str], out_path: str | Path, title: str | None = None
) -> Path:
    """Save a two-panel figure: raw counts and row-normalised percentages (the paper's Table 3 view)."""
    counts = np.asarray(conf, dtype=np.int64)
    labels = [str(n) for n in class_names]
    if counts.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion shape {counts.shape} does not match {len(labels)} class names")
    percent = row_normalised(counts)
    c = len(labels)
    side = max(4.0, 0.6 * c + 2.0)
    fig = new_figure(2 * side + 2.5, side + 0.4)
    ax_counts, ax_pct = fig.subplots(1, 2)
    im = _draw_matrix(ax_counts, counts, labels, "d", "Counts", float(counts.max(initial=0)))
    fig.colorbar(im, ax=ax_counts, shrink=0.8)
    im = _draw_matrix(ax_pct, percent, labels, ".1f", "Prediction % given ground truth", 100.0)
    fig.colorbar(im, ax=ax_pct, shrink=0.8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path)


def _openmp_limit(num_threads: int | None) -> Any:
    """Cap OpenMP threads in a block (threadpoolctl ships with scikit-learn); a no-op when unavailable."""
    if num_threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - depends on the environment
        return contextlib.nullcontext()
    return threadpool_limits(limits=max(1, int(num_threads)), user_api="openmp")


def tsne_subsample_indices(num_points: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a reproducible random subset (all points when there are few enough)."""
    if max_points < 1:
        raise ValueError(f"max_points must be positive, got {max_points}")
    if num_points <= max_points:
        return np.arange(num_points)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_points, size=max_points, replace=False))


@dataclass(frozen=True)
class TsneOptions:
    """How :func:`write_tsne` embeds: the subsampling seed and size, t-SNE's perplexity and iterations, and the
    OpenMP thread cap during the fit (``None`` leaves the threading alone)."""

    seed: int = 0
    max_points: int = 5000
    perplexity: float = 30.0
    max_iter: int = 1000
    num_threads: int | None = 1


#: write_tsne's settings in their old positional order (after ``out_path``), before :class:`TsneOptions`.
_TSNE_POSITIONAL = ("seed", "max_points", "perplexity", "max_iter", "num_threads")


def write_tsne(
    features: ArrayLike,
    labels: ArrayLike,
    class_names: Sequence[str],
    out_path: str | Path,
    *args: Any,
    options: TsneOptions | None = None,
    **legacy: Any,
) -> np.ndarray:
    """Embed penultimate features with t-SNE (as in the paper's Fig. 5) and save a scatter coloured by class.

    ``options`` (a :class:`TsneOptions`; its fields as keywords or by position, the form before it, still work
    with a DeprecationWarning). More than ``max_points`` points are subsampled reproducibly from ``seed``, since
    t-SNE cost grows quickly with N. Perplexity is capped below the sample count, which scikit-learn requires.
    ``num_threads`` caps OpenMP threads during the fit: torch and scikit-learn each ship their own libgomp,
    and once torch has run, the two pools' spinning workers starve each other (t-SNE ran 5-20x slower on a
    2-core machine), so the default is 1; ``None`` leaves the threading alone. Returns the (n, 2) embedding
    of the plotted points.
    """
    legacy.update(positional_settings(args, _TSNE_POSITIONAL, legacy, "write_tsne"))
    opts = legacy_options(options, TsneOptions, legacy, "write_tsne")
    try:
        from sklearn.manifold import TSNE
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"t-SNE needs scikit-learn; {_ANALYSIS_HINT}") from exc
    feats, labs, names = _tsne_inputs(features, labels, class_names)
    idx = tsne_subsample_indices(feats.shape[0], opts.max_points, opts.seed)
    feats, labs = feats[idx], labs[idx]
    n = feats.shape[0]
    kwargs: dict[str, Any] = {
        "n_components": 2,
        "perplexity": float(min(opts.perplexity, max(1.0, (n - 1) / 3.0))),
        "init": "pca",
        "learning_rate": "auto",
        "random_state": opts.seed,
    }
    # scikit-learn renamed n_iter to max_iter in 1.5 and removed n_iter in 1.7.
    iter_key = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"
    kwargs[iter_key] = max(250, int(opts.max_iter))
    with _openmp_limit(opts.num_threads):
        embedding = TSNE(**kwargs).fit_transform(feats)
    _scatter(embedding, labs, names, out_path)
    return embedding


def _tsne_inputs(
    features: ArrayLike, labels: ArrayLike, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features as float64 (N, D), labels as int64 (N,) within the classes, and the class names; at least 4
    points, since t-SNE needs them."""
    feats = np.asarray(features, dtype=np.float64)
    labs = np.asarray(labels).astype(np.int64)
    names = [str(n) for n in class_names]
    if feats.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {feats.shape}")
    if labs.shape != (feats.shape[0],):
        raise ValueError(f"labels must have shape ({feats.shape[0]},), got {labs.shape}")
    if feats.shape[0] < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {feats.shape[0]}")
    if labs.size and (labs.min() < 0 or labs.max() >= len(names)):
        raise ValueError(f"labels must lie in [0, {len(names)})")
    return feats, labs, names


def _scatter(embedding: np.ndarray, labs: np.ndarray, names: list[str], out_path: str | Path) -> None:
    """Save the embedding as a scatter, one colour per class."""
    fig = new_figure(7.0, 6.0)
    ax = fig.subplots()
    colours = _class_colours(len(names))
    for k, name in enumerate(names):
        mask = labs == k
        if mask.any():
            ax.scatter(embedding[mask, 0], embedding[mask, 1], s=6, color=colours[k], label=name, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of features ({embedding.shape[0]} points)")
    ax.legend(markerscale=3, fontsize=8, loc="best", frameon=True)
    save_figure(fig, out_path)


def _series(
    history: Sequence[Mapping[str, Any]], key: str, xs: list[float]
) -> tuple[list[float], list[float]]:
    """Points of one metric, skipping epochs where it was not recorded (e.g. validation every k epochs)."""
    px, py = [], []
    for x, row in zip(xs, history, strict=True):
        v = row.get(key)
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            if math.isfinite(float(v)):
                px.append(x)
                py.append(float(v))
    return px, py


def plot_curves(history: Sequence[Mapping[str, Any]], out_path: str | Path) -> Path:
    """Plot training curves from per-epoch records such as ``{"epoch": 1, "train_loss": .., "val_acc": ..}``.

    Keys containing ``loss`` go to a loss panel, keys containing ``acc`` or ``f1`` to an accuracy panel,
    and keys named ``lr``/``*_lr`` to a log-scale learning-rate panel; other keys are ignored. The x axis
    is ``epoch`` when recorded, else the record number.
    """
    if not history:
        raise ValueError("history is empty")
    xs = [float(row.get("epoch", i + 1)) for i, row in enumerate(history)]
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys and k != "epoch")
    groups: dict[str, list[str]] = {"loss": [], "accuracy": [], "learning rate": []}
    for key in keys:
        low = key.lower()
        if "loss" in low:
            groups["loss"].append(key)
        elif "acc" in low or "f1" in low:
            groups["accuracy"].append(key)
        elif low == "lr" or low.endswith("_lr") or low == "learning_rate":
            groups["learning rate"].append(key)
    panels = [(name, ks) for name, ks in groups.items() if any(_series(history, k, xs)[0] for k in ks)]
    if not panels:
        raise ValueError(f"history has no plottable loss/accuracy/lr values (keys: {keys})")
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(5.0 * len(panels), 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (name, ks) in zip(axes, panels, strict=True):
        for key in ks:
            px, py = _series(history, key, xs)
            if px:
                ax.plot(px, py, marker="o" if len(px) < 30 else None, markersize=3, label=key)
        if name == "learning rate":
            ax.set_yscale("log")
        ax.set_title(name.capitalize())
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out_path)


def _draw_reliability(ax: Any, bins: Mapping[str, np.ndarray], ece: float, title: str, colour: str) -> None:
    """Accuracy bars per confidence bin against the diagonal; the hatched part is the gap to perfect calibration."""
    edges = np.asarray(bins["edges"], dtype=np.float64)
    counts = np.asarray(bins["counts"])
    used = counts > 0
    left, width = edges[:-1][used], np.diff(edges)[used]
    acc, conf = np.asarray(bins["accuracy"])[used], np.asarray(bins["confidence"])[used]
    ax.bar(left, acc, width=width, align="edge", color=colour, edgecolor="black", linewidth=0.6,
           label=f"accuracy (ECE {100.0 * ece:.2f}%)")
    ax.bar(left, conf - acc, bottom=acc, width=width, align="edge", fill=False, edgecolor="crimson",
           hatch="//", linewidth=0.6, label="gap to confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1.0, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("confidence (largest probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {100.0 * ece:.2f}% · {int(counts.sum())} samples")
    ax.legend(loc="upper left", fontsize=8)


def plot_reliability(
    probs: ArrayLike,
    targets: ArrayLike,
    out_path: str | Path,
    *,
    calibrated_probs: ArrayLike | None = None,
    temperature: float | None = None,
    n_bins: int = 15,
    title: str | None = None,
) -> Path:
    """Save a reliability diagram: accuracy per confidence bin vs the diagonal, with the ECE.

    ``probs`` are the uncalibrated (T = 1) softmax probabilities; with ``calibrated_probs`` (the same samples
    after temperature scaling, ``temperature`` naming T) a second panel shows the calibrated model, so the
    effect of the temperature is visible side by side. Bars below the diagonal mean over-confidence.
    """
    from .calibration import expected_calibration_error, reliability_bins

    panels = [(probs, "Uncalibrated (T = 1)", "tab:blue")]
    if calibrated_probs is not None:
        label = "Temperature-scaled" + (f" (T = {float(temperature):.3g})" if temperature is not None else "")
        panels.append((calibrated_probs, label, "tab:green"))
    data = [(reliability_bins(p, targets, n_bins), expected_calibration_error(p, targets, n_bins), name, colour)
            for p, name, colour in panels]
    fig = new_figure(5.0 * len(data), 5.4)
    axes = np.atleast_1d(fig.subplots(1, len(data)))
    for ax, (bins, ece, name, colour) in zip(axes, data, strict=True):
        _draw_reliability(ax, bins, ece, name, colour)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_path)
