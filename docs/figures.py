"""Regenerate the concept figures in docs/img from the bundled SmolLM2-135M (real weights).

    python docs/figures.py              # all four, a few minutes on 2 CPU cores (sgm's calibration dominates)
    python docs/figures.py --out DIR    # somewhere else

- ``mp-edge.png``: singular-value histograms of two SmolLM2 matrices and of Gaussian noise of the same
  shape, with the median and the Marchenko–Pastur bulk edge the ``mp`` scorer uses;
- ``selection.png``: Spectrum SNR of every matrix (rank within its type) with hybrid-25's selection;
- ``tiers.png``: the ALoRS demo plan: rank per module (tiers high/medium trained, low frozen);
- ``groups.png``: the SGM demo plan after calibration: modules sharing one LoRA, by group.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bundled:smollm2-135m"
EDGE_MATRICES = ("model.layers.10.mlp.up_proj", "model.layers.10.self_attn.v_proj")


def mp_edge(out: Path) -> Path:
    """Histograms of singular values: two real matrices and i.i.d. noise, with median and MP edge."""
    import matplotlib.pyplot as plt

    from spectra_core.spectral.snr import mp_edge as edge_of
    from spectra_core.spectral.snr import mp_snr
    from spectra_core.spectral.sources import open_weights

    weights = dict(open_weights(MODEL, names=list(EDGE_MATRICES)))
    first = weights[EDGE_MATRICES[0]].float()
    noise = torch.randn(first.shape, generator=torch.Generator().manual_seed(0)) * first.std()
    panels = [(name.removeprefix("model."), w.float()) for name, w in weights.items()]
    panels.append((f"Gaussian noise {tuple(first.shape)}", noise))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (title, w) in zip(axes, panels):
        s = torch.linalg.svdvals(w)
        shape = (w.shape[0], w.shape[1])
        edge, score = edge_of(s, shape), mp_snr(s, shape)
        ax.hist(s.numpy(), bins=60, color="0.6")
        ax.axvline(float(s.median()), color="tab:blue", label="median")
        ax.axvline(edge, color="tab:red", label="MP edge")
        ax.set_title(f"{title}\nmp score {score:.3f}, {int((s > edge).sum())} values above the edge", fontsize=9)
        ax.set_xlabel("singular value")
        print(f"{title}: mp score {score:.4f}, edge {edge:.3f}, {int((s > edge).sum())} of {len(s)} above")
    axes[0].set_ylabel("count")
    axes[0].legend(fontsize=8)
    return _save(fig, out / "mp-edge.png")


def selection(out: Path) -> Path:
    """The demo config's scores and plan: which modules hybrid-25 trains."""
    from spectra_core.export.plots import snr_heatmap
    from spectra_core.pipeline import Pipeline

    pipe = Pipeline.from_yaml(ROOT / "configs" / "demo.yaml")
    scores = pipe.scan(progress=False)
    return snr_heatmap(scores, pipe.plan(scores), out / "selection.png")


def tiers(out: Path) -> Path:
    """The ALoRS demo config's plan as ranks on the layer × type grid."""
    from spectra_core.export.plots import ranks_picture
    from spectra_core.pipeline import Pipeline

    pipe = Pipeline.from_yaml(ROOT / "plugins" / "alors" / "configs" / "alors-demo.yaml")
    return ranks_picture(pipe.plan(), out / "tiers.png", dpi=90)


def groups(out: Path) -> Path:
    """The SGM demo config's plan after calibration: which modules share one LoRA."""
    from spectra_core.export.plots import groups_picture
    from spectra_core.pipeline import Pipeline

    pipe = Pipeline.from_yaml(ROOT / "plugins" / "sgm" / "configs" / "sgm-demo.yaml")
    plan = pipe.calibrate(pipe.plan())
    print(f"sgm: {len(plan.groups())} groups, {plan.trainable_parameters():,} trainable parameters")
    return groups_picture(plan, out / "groups.png", dpi=90)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


FIGURES = {"mp-edge": mp_edge, "selection": selection, "tiers": tiers, "groups": groups}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="Where the PNGs go.")
    ap.add_argument("names", nargs="*", help=f"Figures to draw: {', '.join(FIGURES)} (default: all).")
    args = ap.parse_args()
    unknown = set(args.names) - set(FIGURES)
    if unknown:
        ap.error(f"unknown figure(s) {', '.join(sorted(unknown))}; choose from {', '.join(FIGURES)}")
    import matplotlib

    matplotlib.use("Agg")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or FIGURES:
        print("wrote", FIGURES[name](args.out))


if __name__ == "__main__":
    main()
