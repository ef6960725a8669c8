"""The report's figures (matplotlib, Agg backend): loss curve, score heatmap, rank and group grids."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from spectra_core.plan import AdapterPlan
from spectra_core.scores import Scores
from spectra_core.spectral.types import layer_index, module_type

Point = tuple[float, float]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve(train: list[Point], evals: list[Point], path: Path, *, dpi: int) -> Path:
    """Train loss per step and held-out loss at each evaluation."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out loss", lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path, dpi)


class Grid:
    """Module names laid out as rows = layers, columns = module types (order of first appearance)."""

    def __init__(self, names: list[str]) -> None:
        self.types = list(dict.fromkeys(module_type(n) for n in names))
        layers = {layer_index(n) for n in names}
        self.layers = sorted(x for x in layers if x is not None) + ([None] if None in layers else [])
        self.cell = {n: (self.layers.index(layer_index(n)), self.types.index(module_type(n))) for n in names}

    def matrix(self, values: dict[str, float]) -> Any:
        """A masked rows × columns array; cells without a (finite) value are masked."""
        import numpy as np

        data = np.full((len(self.layers), len(self.types)), np.nan)
        for name, value in values.items():
            if name in self.cell and value is not None and math.isfinite(value):
                data[self.cell[name]] = value
        return np.ma.masked_invalid(data)

    def figure(self, title: str) -> tuple[Any, Any]:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(self.types) + 2.5), max(3.0, 0.28 * len(self.layers) + 1.8)))
        ax.set_xticks(range(len(self.types)), self.types, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(self.layers)), ["other" if x is None else str(x) for x in self.layers], fontsize=7)
        ax.set_xlabel("module type")
        ax.set_ylabel("layer")
        ax.set_title(title)
        return fig, ax

    def annotate(self, ax: Any, labels: dict[str, str]) -> None:
        """Write a short label in each named cell (only when the grid is small enough to read)."""
        if len(self.layers) * len(self.types) > 400:
            return
        for name, text in labels.items():
            row, col = self.cell[name]
            ax.text(col, row, text, ha="center", va="center", fontsize=6)


def snr_heatmap(scores: Scores, plan: AdapterPlan, path: Path) -> Path:
    """The scan's heatmap (rank of each score within its module type), trained modules marked."""
    from spectra_core.spectral.heatmap import write_heatmap

    trained = {m.name for m in plan.active()}
    selection = {t: [m for m in scores.modules if m.type == t and m.name in trained] for t in scores.types()}
    return write_heatmap(scores, selection, path, title=f"{scores.scorer} scores (rank within type); marked: trained")


def ranks_picture(plan: AdapterPlan, path: Path, *, dpi: int) -> Path:
    """LoRA rank of every trained module; grey, rank in brackets: a LoRA that is present but frozen
    (an inactive or demoted module); blank: no LoRA."""
    from matplotlib.colors import ListedColormap

    grid = Grid(list(plan.modules))
    trained = {m.name: float(m.rank) for m in plan.injected() if m.active}
    frozen = {m.name: float(m.rank) for m in plan.injected() if not m.active}
    fig, ax = grid.figure("LoRA rank" + (" (grey: frozen LoRA)" if frozen else ""))
    if frozen:
        ax.imshow(grid.matrix(frozen), aspect="auto", cmap=ListedColormap(["0.85"]))
    image = ax.imshow(grid.matrix(trained), aspect="auto", cmap="YlOrRd", vmin=0)
    fig.colorbar(image, ax=ax, label="rank")
    grid.annotate(ax, {n: str(int(r)) for n, r in trained.items()} | {n: f"({int(r)})" for n, r in frozen.items()})
    return _save(fig, path, dpi)


def groups_picture(plan: AdapterPlan, path: Path, *, dpi: int) -> Path:
    """Modules colored by the group whose LoRA they share; grey: trained with its own LoRA; blank: frozen."""
    from matplotlib.colors import ListedColormap

    plt = _pyplot()
    groups = plan.groups()
    index = {name: float(i) for i, members in enumerate(groups.values()) for name in members}
    grid = Grid(list(plan.modules))
    fig, ax = grid.figure(f"shared-LoRA groups ({len(groups)}); grey: own LoRA")
    own = {m.name: 0.0 for m in plan.active() if m.name not in index}
    ax.imshow(grid.matrix(own), aspect="auto", cmap=ListedColormap(["0.85"]))
    palette = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (14, 15)]  # greys mean "own"
    colors = [palette[i % len(palette)] for i in range(len(groups))]
    ax.imshow(grid.matrix(index), aspect="auto", cmap=ListedColormap(colors), vmin=-0.5, vmax=len(groups) - 0.5)
    grid.annotate(ax, {name: gid for gid, members in groups.items() for name in members})
    return _save(fig, path, dpi)


def _save(fig: Any, path: Path, dpi: int) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)
    return path
