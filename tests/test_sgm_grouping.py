"""SGM pure parts: agglomerative grouping, cosine buckets, projection weights, option validation."""

from __future__ import annotations

import pytest
import torch

from spectra_core.config import load_config
from spectra_core.errors import ConfigError
from spectra_core.plan import AdapterPlan, ModulePlan
from spectra_core.registry import get_registry
from spectra_sgm.grouping import agglomerate, contiguous, mean_pairwise
from spectra_sgm.projection import member_weights
from spectra_sgm.similarity import buckets, cosine_matrix

SIM = torch.tensor([[1.0, 0.9, 0.8, 0.1],
                    [0.9, 1.0, 0.7, 0.2],
                    [0.8, 0.7, 1.0, 0.6],
                    [0.1, 0.2, 0.6, 1.0]], dtype=torch.float64)


def test_threshold_controls_merging():
    assert agglomerate(SIM, 0.95, layers=[0, 1, 2, 3]) == [[0], [1], [2], [3]]
    assert agglomerate(SIM, 0.75, layers=[0, 1, 2, 3]) == [[0, 1, 2], [3]]  # avg(0.8, 0.7) = 0.75
    assert agglomerate(SIM, -1.0, layers=[0, 1, 2, 3]) == [[0, 1, 2, 3]]


def test_linkage_max_size_and_contiguity():
    assert agglomerate(SIM, 0.75, layers=[0, 1, 2, 3], linkage="complete") == [[0, 1], [2], [3]]
    assert agglomerate(SIM, 0.6, layers=[0, 1, 2, 3], linkage="single") == [[0, 1, 2, 3]]
    assert agglomerate(SIM, -1.0, layers=[0, 1, 2, 3], max_size=2) == [[0, 1], [2, 3]]
    # layers 0, 5, 6, 7: module 0 may not join 5/6 when only adjacent layers may share
    assert agglomerate(SIM, 0.4, layers=[0, 5, 6, 7]) == [[0, 1, 2], [3]]
    assert agglomerate(SIM, 0.4, layers=[0, 5, 6, 7], only_contiguous=True) == [[0], [1, 2, 3]]
    assert contiguous([3, 1, 2]) and not contiguous([1, 3]) and not contiguous([1, None])


def test_ties_are_deterministic():
    flat = torch.ones(4, 4, dtype=torch.float64)
    assert agglomerate(flat, 0.0, layers=[0, 1, 2, 3], max_size=2) == [[0, 1], [2, 3]]
    assert mean_pairwise(SIM, [0, 1, 2]) == pytest.approx((0.9 + 0.8 + 0.7) / 3)


def test_cosine_matrix():
    a = torch.tensor([[1.0, 0.0]])
    sim = cosine_matrix([a, 2 * a, -a, torch.tensor([[0.0, 3.0]])])
    assert sim[0, 1] == pytest.approx(1.0) and sim[0, 2] == pytest.approx(-1.0) and sim[0, 3] == pytest.approx(0.0)


def test_buckets_split_by_shape_and_rank():
    def mod(name: str, shape: tuple[int, int], rank: int = 4) -> ModulePlan:
        return ModulePlan(name=name, type=name.split(".", 3)[-1], shape=shape, active=True, rank=rank, alpha=8)

    names = ["model.layers.0.mlp.up", "model.layers.1.mlp.up", "model.layers.2.mlp.up", "model.layers.0.attn.q"]
    plan = AdapterPlan(allocator="t", modules={n: mod(n, (8, 4), rank=2 if n.endswith("2.mlp.up") else 4)
                                               for n in names})
    found = buckets(plan, names)
    assert [b.names for b in found] == [names[:2], names[2:3], names[3:]]
    assert found[0].layers == [0, 1] and found[0].label == "mlp.up 8×4 r4"


def test_projection_weights():
    g = torch.tensor([1.0, 2.0, 0.0])
    agree = torch.stack([g, 1.1 * g, 0.9 * g])  # members that agree: the projection keeps the sum
    w = member_weights(agree, 1)
    assert torch.allclose(w @ agree.double(), agree.double().sum(0), atol=1e-6)
    odd = torch.stack([g, g, torch.tensor([0.0, 0.0, 0.1])])  # third member orthogonal and small
    w = member_weights(odd, 1)
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(member_weights(odd, 3), torch.ones(3, dtype=torch.float64), atol=1e-6)
    assert torch.equal(member_weights(torch.zeros(2, 3), 1), torch.zeros(2, dtype=torch.float64))


def _config(**options) -> dict:
    return {"method": "sgm", "model": {"source": "bundled:smollm2-135m"},
            "gradient_merger": {"name": "cosine-groups", "options": options}}


@pytest.mark.parametrize("options, where", [
    ({"threshold": 1.5}, "gradient_merger.options.threshold"),
    ({"threshold": -1.01}, "gradient_merger.options.threshold"),
    ({"calibration_batches": 0}, "gradient_merger.options.calibration_batches"),
    ({"max_group_size": 1}, "gradient_merger.options.max_group_size"),
    ({"merge": "average"}, "gradient_merger.options.merge"),
])
def test_bad_options_fail_at_config_time(options, where):
    with pytest.raises(ConfigError) as err:
        load_config(data=_config(**options))
    assert where in str(err.value)


def test_method_sgm_composes_the_stages():
    cfg = load_config(data=_config())
    assert (cfg.quantizer.name, cfg.scorer.name, cfg.allocator.name) == ("bnb-nf4", "spectrum", "spectrum-top")
    assert cfg.allocator.options.mode == "targeted"
    assert cfg.gradient_merger.name == "cosine-groups" and cfg.gradient_merger.options.threshold == 0.0
    assert [e.name for e in cfg.exporters] == ["peft-adapter", "merged", "report"]
    reg = get_registry()
    assert reg.provider[("gradient_merger", "cosine-groups")] == "sgm"
    assert reg.provider[("rebalancer", "cosine-regroup")] == "sgm"
