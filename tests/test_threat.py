"""Norms measure and project as their definitions say."""
from __future__ import annotations

import pytest
import torch

from arena.threat import Knowledge, Norm, ThreatModel


def test_measure_known_values():
    delta = torch.zeros(2, 1, 2, 2)
    delta[0, 0, 0, 0], delta[0, 0, 1, 1] = 3.0, -4.0
    assert Norm.L2.measure(delta).tolist() == [5.0, 0.0]
    assert Norm.LINF.measure(delta).tolist() == [4.0, 0.0]
    assert Norm.L0.measure(delta).tolist() == [2.0, 0.0]


def test_l2_projection_scales_only_what_is_outside():
    delta = torch.tensor([[3.0, 4.0], [0.3, 0.4]]).view(2, 1, 1, 2)
    out = Norm.L2.project(delta, 1.0)
    assert torch.allclose(Norm.L2.measure(out), torch.tensor([1.0, 0.5]))
    assert torch.allclose(out[1], delta[1])


def test_linf_projection_with_per_sample_eps():
    delta = torch.tensor([[0.5, -0.5], [0.5, -0.5]]).view(2, 1, 1, 2)
    out = Norm.LINF.project(delta, torch.tensor([0.1, 0.3]))
    assert out.flatten().tolist() == pytest.approx([0.1, -0.1, 0.3, -0.3])


def test_l0_projection_keeps_largest_components():
    delta = torch.tensor([[0.1, -0.9, 0.5, 0.2]]).view(1, 1, 2, 2)
    out = Norm.L0.project(delta, 2)
    assert out.flatten().tolist() == pytest.approx([0.0, -0.9, 0.5, 0.0])


def test_threat_model_projects_into_box_and_ball():
    x = torch.full((1, 1, 2, 2), 0.95)
    tm = ThreatModel("linf", 0.1, "white-box")
    out = tm.project(x + 0.5, x)
    assert torch.allclose(out, torch.ones_like(x))
    assert tm.knowledge is Knowledge.WHITE_BOX
    with pytest.raises(ValueError):
        ThreatModel(Norm.L2, -1.0)


def test_l1_measure_and_projection_is_soft_thresholding():
    delta = torch.tensor([[0.5, -0.3, 0.1, 0.0], [0.1, 0.1, 0.0, 0.0]]).view(2, 1, 2, 2)
    assert Norm.L1.measure(delta).tolist() == pytest.approx([0.9, 0.2])
    out = Norm.L1.project(delta, 0.5)
    # τ = 0.15 brings the first sample to 0.35 + 0.15 = 0.5; the second is inside already
    assert out[0].flatten().tolist() == pytest.approx([0.35, -0.15, 0.0, 0.0])
    assert torch.equal(out[1], delta[1])


def _brute_force_l1_box(d: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """The projection by a fine scan of the threshold τ (slow, obviously right)."""
    best = None
    for tau in torch.linspace(0, float(d.abs().max()), 20001):
        cand = (d.sign() * (d.abs() - tau).clamp_min(0)).clamp(-x, 1 - x)
        if float(cand.abs().sum()) <= eps + 1e-6:
            best = cand
            break
    return best


def test_l1_box_projection_is_the_nearest_point_of_ball_and_box():
    from arena.threat import project_l1_box
    torch.manual_seed(0)
    x = torch.rand(6, 1, 3, 3)
    d = torch.randn(6, 1, 3, 3)
    out = project_l1_box(d, x, 1.5)
    assert bool((Norm.L1.measure(out) <= 1.5 + 1e-5).all())
    assert bool(((x + out) >= -1e-7).all() and ((x + out) <= 1 + 1e-7).all())
    for i in range(6):
        ref = _brute_force_l1_box(d[i], x[i], 1.5)
        assert torch.allclose(out[i], ref, atol=2e-3)
    # any other feasible point is farther from d (random feasible points)
    for _ in range(50):
        other = Norm.L1.project(torch.randn_like(d), 1.5).clamp(-x, 1 - x)
        assert bool(((other - d).flatten(1).norm(dim=1) >= (out - d).flatten(1).norm(dim=1) - 1e-5).all())
