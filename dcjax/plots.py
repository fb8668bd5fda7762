"""Figures a person would rather look at than JSON: image grids and curves (PNG, atomic)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # Headless: no display on servers or CI.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dcjax import checkpoint  # noqa: E402


def _save(fig, path: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    checkpoint.atomic_write_bytes(path, buffer.getvalue())


def image_grid(path: str, images: np.ndarray, num_classes: int, title: str = "") -> None:
    """One row per class, one column per image.

    images: [K*ipc, H, W, C] in [0, 1] (denormalised), class-major.
    """
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    ipc = images.shape[0] // num_classes
    grid = images.reshape((num_classes, ipc) + images.shape[1:])
    fig, axes = plt.subplots(num_classes, ipc, figsize=(ipc * 0.8, num_classes * 0.8), squeeze=False)
    for c in range(num_classes):
        for i in range(ipc):
            img = grid[c, i]
            axes[c, i].imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0.0, vmax=1.0)
            axes[c, i].axis("off")
    if title:
        fig.suptitle(title)
    _save(fig, path)


def curve(path: str, xs, series: dict[str, list[float]], xlabel: str, ylabel: str, title: str = "") -> None:
    """Line plot of one or more named series over the same xs."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, ys in series.items():
        ax.plot(xs[: len(ys)], ys, marker="o" if len(ys) < 30 else None, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    if title:
        ax.set_title(title)
    _save(fig, path)


def roc_figure(
    path: str, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "", floor: float = 1e-5
) -> None:
    """Log-log ROC comparing attacks, with the chance diagonal; the low-FPR corner is where attacks differ.

    curves: name -> (fpr [P], tpr [P]) points already clipped to [floor, 1] (e.g.
    ``metrics.log_log_roc_points``).
    """
    if not 0.0 < floor < 1.0:
        raise ValueError(f"floor must be in (0, 1), got {floor}")
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (fpr, tpr) in curves.items():
        ax.plot(np.asarray(fpr), np.asarray(tpr), label=name)
    ax.plot([floor, 1.0], [floor, 1.0], "k--", lw=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(floor, 1.0)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    _save(fig, path)
