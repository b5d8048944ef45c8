"""Shared fixtures: a tiny trained digits model, registries with test-only plugins, and the
devices a device test runs on."""
from __future__ import annotations

import pytest
import torch

from arena import testing

#: Test files that take longest (the papers' directions, ~8 minutes of work; every tournament file
#: at toy scale, ~4), collected first: under make test's two xdist workers, which take whole files
#: in collection order, each starts on one of them while the other runs the rest, instead of the
#: last worker starting one when the other is nearly done.
FIRST = ("test_paper_directions.py", "test_tournament_files_smoke.py")

NO_CUDA = "no CUDA device here (torch.cuda.is_available() is False): the cuda case runs where one is"


@pytest.fixture(scope="session")
def registry():
    return testing.registry()


@pytest.fixture()
def model():
    """A fresh copy of the small digits CNN trained once per session."""
    return testing.trained_model()


@pytest.fixture()
def batch():
    return testing.attack_batch(32)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                             reason=NO_CUDA))])
def device(request) -> torch.device:
    """Each device a test exercises: the CPU always, CUDA where one is present (else skipped)."""
    return torch.device(request.param)


def pytest_collection_modifyitems(config, items):
    """Whole files of :data:`FIRST` moved to the front, each file's tests kept together and in
    order (a stable sort): module fixtures are set up once either way."""
    items.sort(key=lambda item: item.path.name not in FIRST)
