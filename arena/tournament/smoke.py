"""A tournament file cut to toy scale, to check that it runs end to end before a long run.

A paper-scale file (the MNIST and CIFAR-10 files under ``tournaments/papers/``: hours or days)
fails late when something in it is wrong at run time: an architecture that does not fit the
data, a defense whose schedule breaks on the data it gets, a metric that finds no examples.
:func:`shrink` keeps every entry, budget and threat view of the file and cuts only what sets the
cost: the evaluated samples, the training and test images loaded, the epochs, and each plugin's
iteration, restart, query and sample counts (the fields of :data:`CAPS` that the plugin's config
has, nested plugins included: an adversarial training's attack, an ensemble's components). The
numbers it produces mean nothing; that every match and metric ends ``ok`` does.
"""
from __future__ import annotations

import copy
from typing import Any

from arena.registry import Registry

#: The toy value of each cost field (a plugin config field of that name, when it is a number or
#: None: None means "no limit" for the fields below, so it is capped too).
CAPS: dict[str, int] = {
    # iterations and steps
    "steps": 3, "binary_search_steps": 2, "max_iterations": 3, "square_iterations": 5,
    "final_search": 2, "iterations": 3, "power_iterations": 1,
    # restarts, targets, rounds, draws
    "restarts": 1, "n_target_classes": 2, "rounds": 1, "eot_iter": 2, "eot_samples": 2, "passes": 2,
    "samples": 4, "draws": 4, "copies": 2, "projections": 1,
    # queries
    "max_queries": 60, "max_evals": 40, "init_evals": 10, "init_size": 20, "seed_size": 20,
    # training (small batches: a few hundred images still make a few dozen steps)
    "epochs": 1, "finetune_epochs": 1, "auto_trials": 2, "auto_trial_batches": 1, "batch_size": 8,
}
#: Images of the dataset loaded, and samples evaluated.
TRAIN_SIZE, TEST_SIZE, SAMPLES = 128, 32, 4


def shrink(data: dict[str, Any], registry: Registry, *, samples: int = SAMPLES, train_size: int = TRAIN_SIZE,
           test_size: int = TEST_SIZE) -> dict[str, Any]:
    """A copy of the parsed tournament file ``data`` at toy scale (see the module docstring);
    ``data`` is left as it is. What is not of the expected type (a string for a count, an unknown
    plugin) is left as it is, for the file's validation to name."""
    out = copy.deepcopy(data)
    if isinstance(out.get("name", ""), str):
        out["name"] = f"{out.get('name', 'tournament')}-smoke"
    out["samples"] = _smaller(out.get("samples"), samples)
    if out.get("batch_size", 0) != "auto":
        out["batch_size"] = _smaller(out.get("batch_size"), samples)
    dataset = out.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.setdefault("params", {}), dict):
        fields = _fields(registry, "datasets", dataset.get("id"))
        for key, cap in (("train_size", train_size), ("test_size", test_size)):
            if key in fields:
                dataset["params"][key] = _smaller(dataset["params"].get(key), cap)
    training = out.setdefault("training", {})
    if isinstance(training, dict):
        for key in ("epochs", "finetune_epochs", "batch_size"):
            training[key] = _smaller(training.get(key), CAPS[key])
    out.pop("match_timeout", None)
    for kind in ("defenses", "attacks", "metrics"):
        entries = out.get(kind)
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict):
                entry.pop("timeout", None)
                _cap(entry, kind, registry)
    return out


def _smaller(value: Any, cap: int) -> Any:
    """``cap`` where ``value`` is missing (None) or a number above it; else ``value`` as it is."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > cap):
        return cap
    return value


def _fields(registry: Registry, kind: str, plugin_id: Any) -> dict[str, Any]:
    cls = getattr(registry, kind, {}).get(plugin_id) if isinstance(plugin_id, str) else None
    cfg = getattr(cls, "Config", None)
    return dict(getattr(cfg, "model_fields", {}))


def _cap(entry: dict[str, Any], kind: str, registry: Registry) -> None:
    """Cap the cost fields of one plugin entry (``{"id": ..., "params": {...}}``) in place, and of
    the plugin entries nested in its params."""
    fields = _fields(registry, kind, entry.get("id"))
    params = entry.setdefault("params", {})
    if not isinstance(params, dict):
        return
    # a metric's samples are of the test images loaded, already few (a clustering index needs more
    # samples than classes)
    caps = {k: v for k, v in CAPS.items() if k != "samples"} if kind == "metrics" else CAPS
    for key, cap in caps.items():
        if key in fields:
            default = fields[key].default
            value = params.get(key, default if isinstance(default, (int, float)) or default is None else cap)
            params[key] = _smaller(value, cap)
    for value in params.values():
        for nested in value if isinstance(value, list) else [value]:
            if isinstance(nested, dict) and isinstance(nested.get("id"), str):
                for other in ("attacks", "defenses"):
                    if nested["id"] in getattr(registry, other, {}):
                        _cap(nested, other, registry)
                        break
