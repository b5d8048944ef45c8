"""The model cache hands out weights only when they are exactly what was saved: an entry that
does not fit the model, or whose bytes changed on disk, is retrained from scratch and replaced,
and a rejected entry leaves no trace in the retrained model."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import arena
from arena.tournament.cache import ModelCache
from arena.tournament.entrants import EntrantSpec, prepare, providers
from arena.tournament.plan import parse_tournament

CONFIG = {
    "name": "cache", "dataset": "digits", "architecture": "digits-cnn", "samples": 20,
    "training": {"epochs": 1},
    "defenses": [{"id": "standard"}],
    "attacks": [{"id": "fgsm", "budgets": [0.1]}],
}


@pytest.fixture(scope="module")
def setup():
    plan = parse_tournament(CONFIG, arena.load_plugins())
    data = plan.dataset.build().load(plan.seed)
    return plan, data, data.test.take(plan.config.samples, plan.seed)


def _spec(plan, cache_root):
    d = plan.defenses[0]
    extra = {}
    if "code" in {f.name for f in dataclasses.fields(EntrantSpec)}:
        extra["code"] = providers(plan.registry, defenses=d.id, architectures=d.architecture.id,
                                  datasets=plan.dataset.id)
    return EntrantSpec(defense=d, dataset=plan.dataset, seed=plan.seed, batch_size=plan.config.batch_size,
                       cache_root=None if cache_root is None else str(cache_root), **extra)


def _trained(setup, cache_root):
    plan, data, evaluation = setup
    entrant = prepare(_spec(plan, cache_root), data, evaluation).entrant
    return entrant.cache_key, {k: v.detach().cpu().clone() for k, v in entrant.model.state_dict().items()}


def _fresh(plan, data):
    d = plan.defenses[0]
    return lambda: d.defense.build(d.architecture.build(), data.input_shape, data.num_classes)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def scratch(setup):
    """The model trained from scratch, with no cache at all."""
    return _trained(setup, None)


def test_an_entry_that_does_not_fit_leaves_no_trace_in_the_retrained_model(setup, scratch, tmp_path):
    """``load_state_dict`` copies every key that fits before it raises: the retrained model must
    not start from those weights."""
    plan, data, _ = setup
    key, weights = scratch
    misfit = _fresh(plan, data)()
    with torch.no_grad():
        for p in misfit.parameters():
            p.zero_()
    name, param = list(misfit.named_parameters())[-1]
    owner = misfit.get_submodule(name.rpartition(".")[0]) if "." in name else misfit
    setattr(owner, name.rpartition(".")[2], nn.Parameter(torch.zeros(param.shape[0] + 1, *param.shape[1:])))
    cache = ModelCache(tmp_path)
    cache.save(key, misfit)

    retrained_key, retrained = _trained(setup, tmp_path)
    assert retrained_key == key
    assert _same(retrained, weights)  # exactly the model trained from scratch
    replaced = cache.load(key, _fresh(plan, data))
    assert replaced is not None and _same({k: v.cpu() for k, v in replaced.state_dict().items()}, weights)


def test_an_entry_whose_bytes_changed_on_disk_is_retrained_and_replaced(setup, scratch, tmp_path):
    plan, data, _ = setup
    key, weights = scratch
    cached_key, cached = _trained(setup, tmp_path)  # trains and caches
    assert cached_key == key and _same(cached, weights)
    (entry,) = tmp_path.glob(f"{key}*.pt")
    raw = bytearray(entry.read_bytes())
    biggest = max(weights.values(), key=lambda t: t.numel())
    at = bytes(raw).find(biggest.contiguous().numpy().tobytes()[:256])
    assert at > 0
    raw[at + 100] ^= 0x40  # one flipped bit in the weights: torch.load itself does not notice
    entry.write_bytes(bytes(raw))

    retrained_key, retrained = _trained(setup, tmp_path)
    assert retrained_key == key and _same(retrained, weights)
    assert bytes(raw) != entry.read_bytes()  # the damaged entry was overwritten
    replaced = ModelCache(tmp_path).load(key, _fresh(plan, data))
    assert replaced is not None and _same({k: v.cpu() for k, v in replaced.state_dict().items()}, weights)


def test_a_cached_entry_is_handed_out_in_a_fresh_module(tmp_path):
    cache = ModelCache(tmp_path)
    trained = nn.Linear(3, 2)
    cache.save("k", trained)
    templates = []

    def fresh():
        templates.append(nn.Linear(3, 2))
        return templates[-1]

    loaded = cache.load("k", fresh)
    assert torch.equal(loaded.weight, trained.weight) and not loaded.training
    assert cache.load("missing", fresh) is None
    assert ModelCache(None).load("k", fresh) is None
    misfit = cache.load("k", lambda: nn.Linear(4, 2))  # the wrong shape: not handed out
    assert misfit is None


def test_a_stale_entry_with_another_dtype_is_not_handed_out(tmp_path):
    cache = ModelCache(tmp_path)
    cache.save("k", nn.Linear(3, 2).double())
    assert cache.load("k", lambda: nn.Linear(3, 2)) is None
