"""Plots of a search: fitness per generation, and the best genome (per-layer heatmap, DFS path).

matplotlib's Agg backend is forced so plotting works on headless machines. Files are written
through a temporary name and renamed, like every other output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def plot_fitness(history: Sequence[Any], path: str | Path, title: str = "fitness") -> Path:
    """Best (of generation and so far) and mean fitness per generation."""
    plt = _pyplot()
    gens = [h.generation + 1 for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(gens, [np.nan if h.best is None else h.best for h in history], "o-", label="best of generation")
    ax.plot(gens, [h.best_so_far for h in history], "-", lw=2, label="best so far")
    ax.plot(gens, [np.nan if h.mean is None else h.mean for h in history], "s--", alpha=0.7, label="mean")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness (higher is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)


def plot_genome(space: Any, x: np.ndarray, path: str | Path, title: str = "best genome") -> Path:
    """Per-layer heatmap when the space offers `layer_table`, the DFS path when it offers
    `path_table`, and a bar chart of the raw coordinates otherwise."""
    plt = _pyplot()
    panels = []
    if hasattr(space, "layer_table"):
        panels.append(("layers",) + tuple(space.layer_table(x)))
    if hasattr(space, "path_table"):
        panels.append(("path",) + tuple(space.path_table(x)))
    if not panels:
        panels.append(("raw", space.labels(), np.asarray(x, float)[None, :]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.2 + sum(_height(p) for p in panels)), squeeze=False)
    for ax, (kind, rows, matrix) in zip(axes[:, 0], panels):
        matrix = np.atleast_2d(np.asarray(matrix, float))
        im = ax.imshow(matrix, aspect="auto", cmap="viridis", interpolation="nearest")
        if kind == "raw":
            ax.set_yticks([])
            ax.set_xticks(range(len(rows)), rows, rotation=90, fontsize=6)
        else:
            ax.set_yticks(range(len(rows)), rows, fontsize=7)
            ax.set_xlabel("layer" if kind == "layers" else "path slot")
        if matrix.size <= 200:
            for (i, j), v in np.ndenumerate(matrix):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
        fig.colorbar(im, ax=ax, fraction=0.03)
    axes[0, 0].set_title(title)
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)


def _height(panel) -> float:
    return 0.35 * max(1, len(panel[1])) if panel[0] != "raw" else 1.5
