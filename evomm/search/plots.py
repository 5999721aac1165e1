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
    """The best genome: a per-layer heatmap when the space offers `layer_table` (PS), the
    layer path with its scales when it decodes to a DFS spec, raw coordinates otherwise."""
    plt = _pyplot()
    spec = space.decode(x)
    is_dfs = isinstance(spec, dict) and spec.get("type") == "dfs"
    if hasattr(space, "layer_table"):
        rows, matrix = space.layer_table(x)
        height = 1.2 + 0.35 * max(1, len(rows))
    elif not is_dfs:
        rows, matrix = space.labels(), np.asarray(x, float)[None, :]
        height = 2.7
    fig, ax = plt.subplots(figsize=(8, height if not is_dfs else 3.8))
    if is_dfs:
        _draw_dfs_path(ax, spec)
    else:
        matrix = np.atleast_2d(np.asarray(matrix, float))
        im = ax.imshow(matrix, aspect="auto", cmap="viridis", interpolation="nearest")
        if hasattr(space, "layer_table"):
            ax.set_yticks(range(len(rows)), rows, fontsize=7)
            ax.set_xticks(range(matrix.shape[1]))
            ax.set_xlabel("layer")
        else:
            ax.set_yticks([])
            ax.set_xticks(range(len(rows)), rows, rotation=90, fontsize=6)
        if matrix.size <= 200:
            for (i, j), v in np.ndenumerate(matrix):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w")
        fig.colorbar(im, ax=ax, fraction=0.03)
    ax.set_title(title)
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)


def _short_name(source: Any) -> str:
    """A checkpoint's folder name; a stage's `.../ps/model` reads as `ps/model`."""
    parts = Path(str(source)).parts
    return "/".join(parts[-2:]) if parts and parts[-1] == "model" else (parts[-1] if parts else str(source))


def _draw_dfs_path(ax, spec: dict[str, Any]) -> None:
    """Path position -> (source, layer), coloured by source, with each hop's scale."""
    sources = [_short_name(s) for s in spec["sources"]]
    path = spec["path"]
    scales = spec.get("scales") or [1.0] * len(path)
    depth = max((layer for _, layer in path), default=0) + 1
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    xs = list(range(len(path)))
    ax.plot(xs, [layer for _, layer in path], "-", color="0.7", zorder=1)
    for s, name in enumerate(sources):
        pts = [(i, layer) for i, (src, layer) in enumerate(path) if src == s]
        if pts:
            ax.scatter(*zip(*pts), s=60, color=colours[s % len(colours)], label=name, zorder=2)
    for i, ((_, layer), scale) in enumerate(zip(path, scales)):
        if i and abs(scale - 1.0) > 1e-3:
            ax.annotate(f"x{scale:.2f}", (i, layer), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=6)
    ax.set_xlabel(f"path position ({len(path)} layers)")
    ax.set_ylabel("source layer")
    ax.set_ylim(-0.5, depth - 0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
