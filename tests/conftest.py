"""Shared fixtures: a tiny trained digits model and registries with test-only plugins."""
from __future__ import annotations

import pytest

from arena import testing


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
