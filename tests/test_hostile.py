"""Hostile plugins: every way an attack could fool the harness is caught, and the model restored.

Each attack below cheats in one way an in-process plugin can (some by accident). The harness must
either fail the call with an :class:`arena.AttackError` naming the attack, or account correctly;
and afterwards the model must answer exactly as before (same clean logits, and an honest FGSM
finds the same robust accuracy as on a fresh model).
"""
from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from torch import nn
from torch.nn.modules import module as torch_module

from arena import AttackError, QueryBudgetExceeded, testing
from arena.attack import FixedBudgetAttack
from arena.plugin import PluginConfig
from arena.threat import Knowledge

EPS = 0.1
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                "_global_backward_pre_hooks", "_global_forward_hooks_always_called",
                "_global_forward_hooks_with_kwargs")


class Permuted(nn.Module):
    """The trained CNN behind a pixel permutation held in a buffer (the identity here), so that the
    model has a buffer whose values matter."""

    def __init__(self, base: nn.Module, pixels: int) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("perm", torch.arange(pixels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x.flatten(1)[:, self.perm].view_as(x))


def fresh(kind: str) -> nn.Module:
    model = testing.trained_model()
    return Permuted(model, 64).eval() if kind == "permuted" else model


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return testing.attack_batch(64)


def fgsm_success(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return testing.registry().make_attack("fgsm")(model, x, y, EPS, seed=0).success


@pytest.fixture(scope="module")
def reference(data) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per model kind: a fresh model's clean logits and honest-FGSM success mask."""
    x, y = data
    out = {}
    for kind in ("cnn", "permuted"):
        model = fresh(kind)
        with torch.no_grad():
            logits = model(x)
        out[kind] = (logits, fgsm_success(model, x, y))
    return out


def assert_pristine(model: nn.Module, kind: str, data, reference) -> None:
    """``model`` answers exactly as a fresh one: clean logits, honest FGSM's robust accuracy."""
    x, y = data
    logits, success = reference[kind]
    assert not any(getattr(torch_module, name) for name in GLOBAL_HOOKS), "a global hook was left behind"
    with torch.no_grad():
        assert torch.equal(model(x), logits)
    assert torch.equal(fgsm_success(model, x, y), success)


# ---------------------------------------------------------------------------- the inputs

class MovesX(FixedBudgetAttack):
    """Test attack that edits ``x`` in place (far outside ε) and returns it."""

    id: ClassVar[str] = "moves-x"

    def run(self, model, x, y, eps, targets):
        x.mul_(-1).add_(1)
        return x


class MovesY(FixedBudgetAttack):
    """Test attack that edits the labels in place, so that every unchanged input 'succeeds'."""

    id: ClassVar[str] = "moves-y"

    def run(self, model, x, y, eps, targets):
        y.add_(1).remainder_(10)
        if targets is not None:
            targets.copy_(model(x).argmax(1))
        return x


def test_in_place_edit_of_x_moves_nothing(data, reference):
    x, y = (t.clone() for t in data)
    x_before = x.clone()
    model = fresh("cnn")
    result = MovesX()(model, x, y, 0.01, seed=0)
    assert torch.equal(x, x_before), "the caller's x was changed"
    true_change = (result.x_adv - x_before).abs().flatten(1).amax(1)
    assert float(true_change.max()) <= 0.01 * (1 + 1e-5)
    assert torch.allclose(result.distance, true_change)
    assert_pristine(model, "cnn", data, reference)


def test_in_place_edit_of_labels_and_targets_changes_no_verdict(data, reference):
    x, y = (t.clone() for t in data)
    y_before, targets = y.clone(), (y + 1) % 10
    targets_before = targets.clone()
    model = fresh("cnn")
    untargeted = MovesY()(model, x, y, EPS, seed=0)
    targeted = MovesY()(model, x, y, EPS, targets=targets, seed=0)
    assert torch.equal(y, y_before) and torch.equal(targets, targets_before)
    assert not untargeted.success.any() and not targeted.success.any()  # x came back unchanged
    assert_pristine(model, "cnn", data, reference)


# ---------------------------------------------------------------------------- the weights

class Hostile(FixedBudgetAttack):
    """Test attack that applies ``cheat(model)`` and returns ``x`` unchanged."""

    id: ClassVar[str] = "hostile"

    def __init__(self, cheat, **config: Any) -> None:
        super().__init__(**config)
        self.cheat = cheat

    def run(self, model, x, y, eps, targets):
        self.cheat(model)
        return x


def flip_every_parameter(model):
    for p in model.parameters():
        p.data.copy_(p.data.flip(0))  # same sum per tensor, no version bump through .data


def replace_data(model):
    w = model.classifier.weight
    w.data = w.data.flip(0)


def permute_buffer(model):
    model.perm.data.copy_(model.perm.data.flip(0))


def change_dtype(model):
    model.classifier.bias.data = model.classifier.bias.data.double()


def replace_module(model):
    model.features[1] = nn.Identity()  # a ReLU: no parameter changes


def override_forward(model):
    model.classifier.forward = lambda x: -torch.nn.functional.linear(x, model.classifier.weight)


def set_attribute(model):
    model.features[6].in_features = 7


@pytest.mark.parametrize("kind, cheat, message", [
    ("cnn", flip_every_parameter, "parameter features.0.weight"),
    ("cnn", replace_data, "parameter classifier.weight"),
    ("permuted", permute_buffer, "buffer perm"),
    ("cnn", change_dtype, "parameter classifier.bias"),
    ("cnn", replace_module, "module features.1"),
    ("cnn", override_forward, "attribute 'forward' of classifier"),
    ("cnn", set_attribute, "attribute 'in_features' of features.6"),
], ids=["sum-preserving", "data-replaced", "buffer", "dtype", "module", "forward", "attribute"])
def test_model_edits_are_caught_and_undone(kind, cheat, message, data, reference):
    model = fresh(kind)
    with pytest.raises(AttackError, match=f"attack 'hostile' modified the model: .*{message}"):
        Hostile(cheat)(model, *data, eps=EPS, seed=0)
    assert_pristine(model, kind, data, reference)


# ---------------------------------------------------------------------------- the hooks

def negate(module, inputs, output):
    return -output


def negate_root_globally(model):
    """A global forward hook (``torch.nn.modules.module``) that negates the model's logits."""
    return torch_module.register_module_forward_hook(lambda m, i, o: -o if m is model else o)


def negate_input_gradient(module, grad_input, grad_output):
    return tuple(None if g is None else -g for g in grad_input)


HOOKS = {
    "forward": (lambda m: m.classifier.register_forward_hook(negate), "forward hook on classifier"),
    "forward-pre": (lambda m: m.features.register_forward_pre_hook(lambda mod, args: (1 - args[0],)),
                    "forward pre-hook on features"),
    "global-forward": (negate_root_globally, "global forward hook"),
    "global-pre": (lambda m: torch_module.register_module_forward_pre_hook(lambda mod, a: None),
                   "global forward pre-hook"),
    "backward": (lambda m: m.register_full_backward_hook(negate_input_gradient), "backward hook on the model"),
    "global-backward": (lambda m: torch_module.register_module_full_backward_hook(negate_input_gradient),
                        "global backward hook"),
}


@pytest.mark.parametrize("hook", list(HOOKS))
def test_hooks_are_caught_and_removed(hook, data, reference):
    register, message = HOOKS[hook]
    model, handles = fresh("cnn"), []
    try:
        with pytest.raises(AttackError, match=f"attack 'hostile' modified the model: registered a {message}"):
            Hostile(lambda m: handles.append(register(m)))(model, *data, eps=EPS, seed=0)
        assert_pristine(model, "cnn", data, reference)
    finally:  # without the harness's restore the hook would poison every later test
        for handle in handles:
            handle.remove()


def test_a_removed_hook_is_restored(data, reference):
    model = fresh("cnn")
    model.classifier.register_forward_hook(lambda m, i, o: 2 * o)  # the model's own (harmless) hook
    x, y = data
    with torch.no_grad():
        own = model(x)
    with pytest.raises(AttackError, match="removed a forward hook on classifier"):
        Hostile(lambda m: m.classifier._forward_hooks.clear())(model, x, y, eps=EPS, seed=0)
    with torch.no_grad():
        assert torch.equal(model(x), own)


def hook_then_fail(model):
    model.classifier.register_forward_hook(negate)
    model.classifier.weight.data.copy_(model.classifier.weight.data.flip(0))
    raise RuntimeError("plugin crashed")


def test_a_crashing_attack_leaves_the_model_restored(data, reference):
    model = fresh("cnn")
    with pytest.raises(RuntimeError, match="plugin crashed"):
        Hostile(hook_then_fail)(model, *data, eps=EPS, seed=0)
    assert_pristine(model, "cnn", data, reference)


class Liar(torch.Tensor):
    """A tensor subclass: its operators could answer the judge anything."""


def test_a_tensor_subclass_is_refused(data):
    class ReturnsLiar(FixedBudgetAttack):
        """Test attack returning a tensor subclass."""

        id: ClassVar[str] = "returns-liar"

        def run(self, model, x, y, eps, targets):
            return x.as_subclass(Liar)

    with pytest.raises(AttackError, match="returned a Liar, expected a plain torch.Tensor"):
        ReturnsLiar()(fresh("cnn"), *data, eps=EPS)


class Detector:
    """A stand-in defense object (what an adaptive attack gets as ``context``)."""

    def __init__(self) -> None:
        self.threshold = 0.5
        self.scale = torch.ones(3)


class Blinds(FixedBudgetAttack):
    """Test adaptive attack that raises the detector's threshold so that nothing is flagged."""

    id: ClassVar[str] = "blinds"
    knowledge: ClassVar[Knowledge] = Knowledge.ADAPTIVE

    def run(self, model, x, y, eps, targets):
        self.context.threshold = float("inf")
        self.context.scale.zero_()
        return x


def test_the_context_object_is_checked_and_restored(data, reference):
    model, detector = fresh("cnn"), Detector()
    scale = detector.scale
    with pytest.raises(AttackError, match="attack 'blinds' modified the model: attribute 'threshold' of context"):
        Blinds()(model, *data, eps=EPS, context=detector)
    assert detector.threshold == 0.5 and detector.scale is scale and torch.equal(scale, torch.ones(3))
    assert_pristine(model, "cnn", data, reference)


# ---------------------------------------------------------------------------- the queries

class BlackBox(FixedBudgetAttack):
    """Test black-box attack that applies ``cheat(oracle, x)`` and returns ``x``."""

    id: ClassVar[str] = "hostile-black-box"
    knowledge: ClassVar[Knowledge] = Knowledge.BLACK_BOX

    class Config(PluginConfig):
        max_queries: int | None = None

    def __init__(self, cheat, **config: Any) -> None:
        super().__init__(**config)
        self.cheat = cheat

    def run(self, model, x, y, eps, targets):
        self.cheat(model, x)
        return x


def many_rows_one_index(oracle, x):
    oracle(x[:1].expand(9550, -1, -1, -1), torch.tensor([0]))


def test_a_short_index_cannot_under_count(data, reference):
    model = fresh("cnn")
    with pytest.raises(ValueError, match="index of 1 entries for 9550 rows"):
        BlackBox(many_rows_one_index)(model, *data, eps=EPS, seed=0)
    assert_pristine(model, "cnn", data, reference)


def test_every_row_is_counted_for_its_sample(data, monkeypatch):
    monkeypatch.setenv("ARENA_ISOLATE_ATTACKS", "0")  # the probe is a lambda: it runs here
    x, y = data
    rows = torch.cat([x[:1].expand(100, -1, -1, -1), x[3:4]])
    index = torch.cat([torch.zeros(100, dtype=torch.long), torch.tensor([3])])
    result = BlackBox(lambda oracle, xs: oracle(rows, index))(fresh("cnn"), x, y, eps=EPS)
    assert int(result.queries[0]) == 100 and int(result.queries[3]) == 1 and int(result.queries.sum()) == 101


def reset_budget(oracle, x):
    with pytest.raises(AttributeError):
        oracle.budget = None
    for _ in range(5):
        oracle(x)


def test_the_budget_cannot_be_lifted(data, reference):
    model = fresh("cnn")
    with pytest.raises(QueryBudgetExceeded, match="budget of 3"):
        BlackBox(reset_budget, max_queries=3)(model, *data, eps=EPS, seed=0)
    assert_pristine(model, "cnn", data, reference)


def reset_counts(oracle, x):
    for _ in range(2):
        oracle(x)
    oracle.counts.zero_()  # a copy
    with pytest.raises(AttributeError):
        oracle.counts = torch.zeros_like(oracle.counts)
    assert oracle.total == 2 * x.shape[0]
    oracle(x)


def test_the_counts_cannot_be_reset(data, reference):
    model = fresh("cnn")
    x, y = data
    result = BlackBox(reset_counts)(model, x, y, eps=EPS, seed=0)
    assert torch.equal(result.queries, torch.full((len(x),), 3))
    with pytest.raises(QueryBudgetExceeded, match="budget of 2"):
        BlackBox(reset_counts, max_queries=2)(model, x, y, eps=EPS, seed=0)
    assert_pristine(model, "cnn", data, reference)
