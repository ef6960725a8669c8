"""Heatmap of scores: layers × module types, colour = rank within the type, selected cells marked."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from spectra_core.scores import Scores
from spectra_core.spectral.selection import Selection, layer_grid, selected_names
from spectra_core.spectral.types import layer_index


def rank_grid(scores: Scores) -> tuple[list[int], list[str], list[list[float]]]:
    """Per layer and type, the module's rank percentile within its type (1 = best; NaN if absent).

    Ranks, not raw scores: Spectrum scores differ by orders of magnitude between types.
    """
    layers, types = layer_grid(scores)
    row = {layer: i for i, layer in enumerate(layers)}
    grid = [[float("nan")] * len(types) for _ in layers]
    for j, type_ in enumerate(types):
        members = [m for m in scores.modules if m.type == type_ and layer_index(m.name) is not None]
        ordered = sorted(members, key=lambda m: m.score, reverse=True)
        for rank, m in enumerate(ordered):
            grid[row[layer_index(m.name)]][j] = 1.0 - rank / max(1, len(ordered) - 1) if len(ordered) > 1 else 1.0
    return layers, types, grid


def write_heatmap(scores: Scores, selection: Selection, path: Path, title: str = "") -> Path:
    """Save the heatmap PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers, types, grid = rank_grid(scores)
    chosen = set(selected_names(selection))
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * max(1, len(types)), 1.5 + 0.22 * max(1, len(layers))))
    image = ax.imshow(np.array(grid, dtype=float).reshape(len(layers), len(types)), aspect="auto",
                      cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    col = {t: j for j, t in enumerate(types)}
    row = {layer: i for i, layer in enumerate(layers)}
    marks = [(col[m.type], row[layer_index(m.name)]) for m in scores.modules
             if m.name in chosen and layer_index(m.name) is not None and m.type in col]
    if marks:
        ax.scatter(*zip(*marks), marker="s", s=30, facecolors="none", edgecolors="red", linewidths=1.2,
                   label="selected")
        ax.legend(loc="upper right", bbox_to_anchor=(1.0, 1.08), fontsize=7, frameon=False)
    ax.set_xticks(range(len(types)), types, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=6)
    ax.set_ylabel("layer")
    ax.set_title(title or f"{scores.scorer} scores (rank within type)", fontsize=9)
    fig.colorbar(image, ax=ax, label="rank percentile (1 = highest score)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
