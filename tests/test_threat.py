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
