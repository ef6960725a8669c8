"""The calibration's record in the run directory: ``sgm/similarity.json`` and ``sgm/similarity.png``.

similarity.json: ``{"schema_version": 1, "step", "strategy", "threshold", "linkage", "groups":
{id: [modules]}, "buckets": [{"label", "modules", "layers", "similarity": k×k cosines}]}``.
The PNG draws one cosine heatmap per bucket (rows/columns = layers), group members outlined.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from spectra_core import TrainingSession
from spectra_core.atomic import write_text

from .options import GroupingOptions
from .similarity import Bucket

DIRNAME = "sgm"


def similarity_record(found: list[Bucket], groups: dict[str, list[str]], options: GroupingOptions, *,
                      step: int, strategy: str) -> dict[str, Any]:
    return {"schema_version": 1, "step": step, "strategy": strategy, "threshold": options.threshold,
            "linkage": options.linkage, "groups": groups,
            "buckets": [{"label": b.label, "modules": b.names, "layers": b.layers,
                         "similarity": [[round(float(v), 6) for v in row] for row in b.similarity]}
                        for b in found]}


def write_artifacts(session: TrainingSession, record: dict[str, Any], *, dpi: int = 110) -> Path | None:
    """Write similarity.json and similarity.png under the session's ``run_dir/sgm`` (main process only)."""
    if session.run_dir is None or not session.is_main_process:
        return None
    out = Path(session.run_dir) / DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    step = record["step"]
    suffix = "" if step == 0 else f"-step{step:06d}"
    write_text(out / f"similarity{suffix}.json", json.dumps(record, indent=1) + "\n")
    heatmap(record, out / f"similarity{suffix}.png", dpi=dpi)
    return out


def heatmap(record: dict[str, Any], path: Path, *, dpi: int) -> Path:
    """One cosine-similarity panel per bucket; members of a group are outlined in its color."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    buckets = record["buckets"]
    cols = min(4, max(1, len(buckets)))
    rows = math.ceil(len(buckets) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    group_of = {m: (i, gid) for i, (gid, ms) in enumerate(record["groups"].items()) for m in ms}
    image = None
    for ax, b in zip(axes.flat, buckets):
        image = ax.imshow(b["similarity"], vmin=-1, vmax=1, cmap="RdBu_r")
        ticks = ["?" if x is None else str(x) for x in b["layers"]]
        ax.set_xticks(range(len(ticks)), ticks, fontsize=6, rotation=90)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=6)
        ax.set_title(b["label"], fontsize=8)
        for i, name in enumerate(b["modules"]):
            if name in group_of:
                color = plt.get_cmap("tab20")(group_of[name][0] % 20)
                for j, other in enumerate(b["modules"]):
                    if group_of.get(other, (None,))[0] == group_of[name][0]:
                        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec=color, lw=1.2))
    for ax in list(axes.flat)[len(buckets):]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="gradient cosine")
    fig.suptitle(f"gradient cosine per module type (step {record['step']}; threshold {record['threshold']:g}, "
                 f"{len(record['groups'])} groups)", fontsize=9)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
