"""The spectrum scorer's approximate mode (``method=slq``) against the exact scores on real SmolLM2
weights, its determinism, and the per-phase timer on the real scan path."""

from __future__ import annotations

import statistics

import pytest
import torch

from spectra_core.builtins.scorers import SpectrumScorer
from spectra_core.spectral import phases
from spectra_core.spectral.selection import top_percent
from spectra_core.spectral.slq import measure_quantile, partial_sums, spectral_measure
from spectra_core.spectral.sources import open_weights
from tests.scan_fixtures import smollm2_gguf_path

LAYERS = 8  # 8 layers × 7 linear types: top-25 % keeps 2 per type (14 picks)


def _linear_source(layers: int | None):
    source = open_weights(smollm2_gguf_path())
    keep = [n for n in source.names() if n.startswith("model.layers.") and "norm" not in n
            and (layers is None or int(n.split(".")[2]) < layers)]
    return source.subset(keep)


def _compare(layers: int | None) -> tuple[list[float], float]:
    source = _linear_source(layers)
    exact = SpectrumScorer().score(source)
    approx = SpectrumScorer({"method": "slq", "exact_below": 0}).score(source)
    errors = [abs(a.score - e.score) / e.score for a, e in zip(approx.modules, exact.modules)]
    picks = top_percent(exact, 25)
    ours = top_percent(approx, 25)
    same = sum(len({m.name for m in picks[t]} & {m.name for m in ours[t]}) for t in picks)
    return errors, same / sum(len(v) for v in picks.values())


def test_slq_scores_track_exact_scores_on_real_weights():
    """Measured at the defaults (16 probes × 64 steps) on layers 0–7: median relative error 7.0 %,
    max 36 %, 71 % of the top-25 % picks shared; unsmoothed atoms gave ~13–20 % median."""
    errors, overlap = _compare(LAYERS)
    assert statistics.median(errors) < 0.10 and max(errors) < 0.5, errors
    assert overlap >= 0.6, overlap


@pytest.mark.slow
def test_slq_on_the_whole_smollm2():
    errors, overlap = _compare(None)
    assert statistics.median(errors) < 0.10 and overlap >= 0.7, (statistics.median(errors), overlap)


def test_slq_measure_is_a_probability_measure_with_exact_quantiles_for_small_matrices():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 12, generator=g)
    nodes, weights = spectral_measure(w, probes=4, steps=12, seed=1)  # 12 steps = full Krylov space
    exact = torch.linalg.svdvals(w.double())
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-9)
    assert float(nodes[-1]) == pytest.approx(float(exact[0]), rel=1e-5)
    for atom in nodes[weights > 1e-6]:  # a complete Krylov space: atoms are singular values
        assert float((exact - atom).abs().min()) < 1e-4 * float(exact[0])
    signal, noise = partial_sums(nodes, weights, float(exact[0]) + 1)
    assert signal == 0 and noise == pytest.approx(float(nodes @ weights), rel=0.05)
    signal, noise = partial_sums(nodes, weights, float(exact[0]) / 2)
    assert signal > 0 and noise > 0 and signal + noise == pytest.approx(sum(partial_sums(nodes, weights, 0.0)))
    assert measure_quantile(nodes, weights, 0.0) == pytest.approx(float(nodes[0]))


def test_slq_is_deterministic_and_independent_of_batching():
    source = _linear_source(1)
    scorer = SpectrumScorer({"method": "slq", "exact_below": 0})
    once = [m.score for m in scorer.score(source).modules]
    alone = [m.score for name in source.names() for m in scorer.score(source.subset([name])).modules]
    assert once == alone
    other_seed = [m.score for m in SpectrumScorer({"method": "slq", "exact_below": 0, "seed": 1}).score(source).modules]
    assert other_seed != once


def test_slq_leaves_small_matrices_exact_by_default():
    source = _linear_source(1)  # SmolLM2's matrices are all smaller than exact_below=1024
    exact = [m.score for m in SpectrumScorer().score(source).modules]
    assert [m.score for m in SpectrumScorer({"method": "slq"}).score(source).modules] == exact


def test_phase_timer_records_the_real_scan_path():
    phases.reset()
    SpectrumScorer().score(_linear_source(1))
    timed = phases.snapshot()
    assert {"read", "check", "upcast", "gram", "eigensolve", "score"} <= set(timed), timed
    assert timed["read"]["calls"] == 7 and all(t["seconds"] >= 0 for t in timed.values())
