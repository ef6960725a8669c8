"""Scorers and spectra: the reference recipe, the MP score, edge cases, and the accuracy contract."""

from __future__ import annotations

import math

import pytest
import torch

from spectra_core.builtins.scorers import MPScorer, SpectrumScorer
from spectra_core.errors import InputError
from spectra_core.registry import get_registry
from spectra_core.scores import Scores
from spectra_core.spectral.selection import top_percent
from spectra_core.spectral.snr import mp_edge, mp_median
from spectra_core.spectral.sources import open_weights
from spectra_core.spectral.spectra import singular_values

pytest_plugins = ["scan_fixtures"]
pytestmark = pytest.mark.usefixtures("one_thread")


class ListSource:
    """A WeightSource over a list of (name, tensor)."""

    fingerprint = "test"

    def __init__(self, items):
        self.items = list(items)

    def __iter__(self):
        return iter(self.items)

    def __len__(self):
        return len(self.items)


def reference_snr(w: torch.Tensor, variant: str = "legacy") -> float:
    """The reference tool's computation, written out independently: fp32 svdvals, torch.quantile IQR."""
    w = w.float().reshape(1, -1) if w.dim() == 1 else w.float()
    s = torch.linalg.svdvals(w)
    sigma = (torch.quantile(s, 0.75) - torch.quantile(s, 0.25)) / 1.349
    n, m = w.shape
    thr = sigma * (1 + math.sqrt(min(n, m) / max(n, m)))
    signal, noise = s[s > thr].sum(), s[s <= thr].sum()
    if noise == 0:
        snr = float("inf") if variant == "legacy" else signal / 1.0
    else:
        snr = signal / noise
    return float(snr / s[0])


def test_registry_builds_scorers_with_options():
    reg = get_registry()
    assert reg.create("scorer", "spectrum", {"variant": "current"}).options.variant == "current"
    assert reg.create("scorer", "mp", {"on_bad": "skip"}).options.on_bad == "skip"
    with pytest.raises(Exception, match="variant"):
        reg.create("scorer", "mp", {"variant": "legacy"})


def test_spectrum_matches_reference_recipe_on_structured_matrices():
    g = torch.Generator().manual_seed(1)
    items = []
    for i, (n, m) in enumerate([(64, 32), (32, 96), (50, 50)]):
        low_rank = torch.randn(n, 3, generator=g) @ torch.randn(3, m, generator=g) * (i + 1)
        items.append((f"model.layers.{i}.mlp.up_proj", low_rank + 0.3 * torch.randn(n, m, generator=g)))
    norm = torch.rand(40, generator=g) + 0.5
    items.append(("model.layers.0.input_layernorm", norm.reshape(1, -1)))
    for variant in ("legacy", "current"):
        scores = SpectrumScorer({"variant": variant}).score(ListSource(items))
        for m, (_, w) in zip(scores.modules, items):
            expected = reference_snr(w, variant)
            assert m.score == pytest.approx(expected, rel=1e-5), m.name
    legacy = SpectrumScorer().score(ListSource(items)).modules[-1].score
    current = SpectrumScorer({"variant": "current"}).score(ListSource(items)).modules[-1].score
    assert math.isinf(legacy) and current == pytest.approx(1.0)


def test_spectrum_is_not_scale_invariant_but_mp_is():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(80, 4, generator=g) @ torch.randn(4, 120, generator=g) + torch.randn(80, 120, generator=g)
    items = [("a.0.x", w), ("a.1.x", 7 * w)]
    spectrum = [m.score for m in SpectrumScorer().score(ListSource(items)).modules]
    mp = [m.score for m in MPScorer().score(ListSource(items)).modules]
    assert spectrum[0] == pytest.approx(7 * spectrum[1], rel=1e-6)  # float32 Gram products round 7·W differently
    assert mp[0] == pytest.approx(mp[1], rel=1e-6) and mp[0] > 0  # 7·W is rounded to fp32


def test_mp_median_matches_random_matrices():
    g = torch.Generator().manual_seed(3)
    for n, m in [(800, 400), (500, 500)]:
        x = torch.randn(n, m, generator=g, dtype=torch.float64)
        eig = torch.linalg.eigvalsh(x.T @ x / n)
        assert float(eig.median()) == pytest.approx(mp_median(m / n), rel=0.03)


def test_mp_separates_signal_from_noise():
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(300, 200, generator=g)
    spikes = torch.randn(300, 5, generator=g) @ torch.randn(5, 200, generator=g)
    s_noise = singular_values([noise])[0]
    assert float(s_noise[0]) <= 1.05 * mp_edge(s_noise, (300, 200))  # pure noise stays inside the bulk
    scores = MPScorer().score(ListSource([("l.0.noise", noise), ("l.0.signal", noise + spikes)])).modules
    assert scores[0].score < 0.05 < 1.0 < scores[1].score


def test_bad_weights_per_variant_and_option():
    bad = torch.randn(16, 16)
    bad[3, 4] = float("nan")
    zero = torch.zeros(12, 20)
    ok = torch.randn(12, 20)
    with pytest.raises(InputError, match="model.layers.3.mlp.up_proj contains NaN"):
        SpectrumScorer().score(ListSource([("model.layers.3.mlp.up_proj", bad)]))
    current = SpectrumScorer({"variant": "current"})
    res = current.score(ListSource([("x.1.a", bad), ("x.1.z", zero), ("x.1.ok", ok)])).modules
    assert math.isnan(res[0].score) and math.isnan(res[1].score) and math.isfinite(res[2].score)
    assert any("x.1.a" in n for n in current.notes) and any("all-zero" in n for n in current.notes)
    assert math.isinf(SpectrumScorer().score(ListSource([("x.1.z", zero)])).modules[0].score)
    with pytest.raises(InputError, match="x.1.z is all zeros"):
        MPScorer().score(ListSource([("x.1.z", zero)]))
    skipper = MPScorer({"on_bad": "skip"})
    res = skipper.score(ListSource([("x.1.a", bad), ("x.1.z", zero), ("x.1.v", ok[:1]), ("x.1.ok", ok)]))
    assert [m.name for m in res.modules] == ["x.1.ok"]
    assert len(skipper.notes) == 3


def test_auto_method_falls_back_for_rank_deficient_matrices():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(200, 10, generator=g) @ torch.randn(10, 150, generator=g)  # rank 10: IQR sits at zeros
    exact = torch.linalg.svdvals(w.double())
    auto = singular_values([w], "auto")[0]
    assert torch.allclose(auto, exact, rtol=1e-10, atol=1e-10 * float(exact[0]))
    assert singular_values([w], "svd")[0].equal(exact)


def test_batching_and_workers_do_not_change_results():
    g = torch.Generator().manual_seed(6)
    ws = [torch.randn(48, 32, generator=g) for _ in range(5)] + [torch.randn(32, 48, generator=g)]
    one = [singular_values([w], workers=1)[0] for w in ws]
    many = singular_values(ws, workers=2)
    assert all(a.equal(b) for a, b in zip(one, many))


def test_accuracy_contract_on_real_smollm2(smollm2_gguf):
    """Every spectrum score within 1e-4 relative of fp32 svdvals, and the same top-k at every percent."""
    source = open_weights(smollm2_gguf)
    ours = SpectrumScorer({"method": "gram"}).score(source)
    items = list(source)
    assert len(items) == len(ours.modules) > 200
    reference = Scores(scorer="ref", modules=[m.model_copy(update={"score": reference_snr(w)})
                                              for m, (_, w) in zip(ours.modules, items)])
    worst = 0.0
    for a, b in zip(ours.modules, reference.modules):
        if math.isinf(b.score):
            assert math.isinf(a.score), a.name
            continue
        worst = max(worst, abs(a.score - b.score) / abs(b.score))
    assert worst < 1e-4
    for percent in (10, 25, 50, 75):
        assert {t: [m.name for m in v] for t, v in top_percent(ours, percent).items()} == \
               {t: [m.name for m in v] for t, v in top_percent(reference, percent).items()}
