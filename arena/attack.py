"""Attack base classes and the harness that enforces the threat model (foolbox 3 style).

A plugin implements :meth:`Attack.run`; callers use ``attack(model, x, y, eps, targets)``, whose
``__call__`` is final: it validates inputs, keeps its own copies of them (the plugin gets copies
it may overwrite), hides the model behind a :class:`QueryOracle` over a ledger the harness holds
for black-box attacks, puts the model in eval mode without parameter gradients, runs the plugin,
checks that the model (parameters, buffers, submodules, attributes, hooks) did not change and
restores it either way (:class:`ModelSnapshot`), projects the result onto the ε-ball and [0, 1],
and measures success and distance itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.modules import module as _torch_module

from arena.data import check_images
from arena import isolation
from arena.errors import AttackError, ConfigError
from arena.model import Model, QueryLedger, QueryOracle, frozen, seeded
from arena.plugin import Plugin
from arena.threat import Knowledge, Norm, ThreatModel, within

_HARNESS = ("__call__", "_run_guarded", "_validate", "_result", "threat_model", "max_queries")  # final


@dataclass
class AttackResult:
    """What an attack produced for each of the N samples.

    ``success`` is judged by the harness on the returned ``x_adv``; ``distance`` is the
    per-sample norm of the perturbation in the attack's norm; ``queries`` counts model queries.
    For minimal-perturbation attacks, a failed sample's distance is ``inf``.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    distance: torch.Tensor
    queries: torch.Tensor
    norm: Norm
    eps: float | None = None
    details: dict[str, Any] | None = None  # what the attack reports of its work (an ensemble's components)

    def success_at(self, eps: float) -> torch.Tensor:
        """Success within budget ``eps``: what one run of a minimal attack says of every budget."""
        if self.eps is not None and not bool(within(torch.tensor(eps), self.eps)):
            raise ValueError(f"this result was produced at eps={self.eps}; cannot judge eps={eps}")
        return self.success & within(self.distance, eps)


@dataclass
class RunOutput:
    """Optional richer return value of :meth:`Attack.run`: adversarial inputs, query counts, and
    ``details``: JSON-able facts of the attack's work that the tournament stores with the match
    (numbers are summed over batches; an ensemble reports its components, see
    :func:`merge_details`). Details never decide success: the harness judges that itself."""

    x_adv: torch.Tensor
    queries: torch.Tensor | None = None
    details: dict[str, Any] | None = None


class Attack(Plugin):
    """Base class of attack plugins.

    Class attributes describe the attack: ``norm`` (the default; a ``norm`` config field
    overrides it), ``knowledge``, ``minimal`` (a minimal-perturbation attack that ignores
    ``eps`` and reports distances) and ``supports_targeted``.
    """

    kind: ClassVar[str] = "attack"
    norm: ClassVar[Norm] = Norm.LINF
    knowledge: ClassVar[Knowledge] = Knowledge.WHITE_BOX
    minimal: ClassVar[bool] = False
    supports_targeted: ClassVar[bool] = True
    oracle_output: ClassVar[str] = "labels"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _HARNESS:
            if name in cls.__dict__:
                raise TypeError(f"{cls.__name__} must not override Attack.{name}; implement run()")

    @property
    def threat_norm(self) -> Norm:
        """The norm this instance attacks in (its ``norm`` config field, else the class's)."""
        return Norm(getattr(self.config, "norm", self.norm))

    @property
    def max_queries(self) -> int | None:
        return getattr(self.config, "max_queries", None)

    def threat_model(self, eps: float | None = None, targeted: bool = False) -> ThreatModel:
        return ThreatModel(self.threat_norm, None if self.minimal else eps, self.knowledge,
                           targeted, self.max_queries)

    def run(self, model: Any, x: torch.Tensor, y: torch.Tensor, eps: float | None,
            targets: torch.Tensor | None) -> torch.Tensor | RunOutput:
        """Craft adversarial examples. ``model`` is a QueryOracle for black-box attacks."""
        raise NotImplementedError

    def __call__(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None = None,
                 targets: torch.Tensor | None = None, *, seed: int | None = None,
                 context: Any = None) -> AttackResult:
        """Run the attack under the harness; see the module docstring. Final."""
        if isinstance(model, QueryOracle):
            raise AttackError(f"attack '{self.id}' must be given the model; the harness builds the oracle")
        if not callable(model):
            raise AttackError(f"attack '{self.id}': model must be callable, got {type(model).__name__}")
        threat = self._validate(x, y, eps, targets)
        # the defense object, for white-box and adaptive attacks (declared hooks only): a black-box
        # or gray-box attack may not see the defense, nor carry it into the attacker process
        self.context = context if self.knowledge in (Knowledge.WHITE_BOX, Knowledge.ADAPTIVE) else None
        # The harness judges against its own copies; the plugin gets copies it may overwrite.
        x, y = x.detach().clone(), y.clone()
        targets = None if targets is None else targets.clone()
        with frozen(model), seeded(seed, x.device):
            if x.shape[0]:
                num_classes = _logits(model, x[:1]).shape[1]  # one sample tells the class count
                _check_labels(y, targets, num_classes, self.id)
            x_adv, queries, details = self._run_guarded(model, x, y, threat.eps, targets, seed)
            x_adv = threat.project(x_adv, x)
            adv_pred = _logits(model, x_adv).argmax(dim=1)  # the model verified and restored
        return self._result(x, y, x_adv, adv_pred, targets, queries, threat, details)

    def _run_guarded(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None,
                     targets: torch.Tensor | None,
                     seed: int | None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any] | None]:
        """``run`` on copies of the inputs, with the model snapshotted before and checked and
        restored after (also when ``run`` raises); queries from the harness's own ledger. A
        black-box attack's ``run`` goes to the attacker process (:mod:`arena.isolation`), where
        the model does not exist."""
        n, device = x.shape[0], x.device
        ledger = QueryLedger(n, self.max_queries, device) if self.knowledge is Knowledge.BLACK_BOX else None
        target = model if ledger is None else QueryOracle(
            model, n, output=self.oracle_output, ledger=ledger)
        snapshot = ModelSnapshot(model, self.context)
        try:
            copies = (x.clone(), y.clone(), eps, None if targets is None else targets.clone())
            if ledger is not None and isolation.enabled():
                out = isolation.run_blackbox(self, target, *copies, seed)
            else:
                out = self.run(target, *copies)
        finally:
            changes = snapshot.restore()
        if changes:
            more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
            raise AttackError(f"attack '{self.id}' modified the model: {changes[0]}{more}")
        x_adv, queries = _unpack(out, ledger, n, device, self.id)
        _check_output(x_adv, x, self.id)
        return x_adv.detach().to(x.dtype), queries, _check_details(getattr(out, "details", None), self.id)

    def _validate(self, x: torch.Tensor, y: torch.Tensor, eps: float | None,
                  targets: torch.Tensor | None) -> ThreatModel:
        try:
            check_images(x, "x")
        except ValueError as exc:
            raise ConfigError(f"attack '{self.id}': {exc}") from None
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise ConfigError(f"attack '{self.id}': y must be int64 of shape ({x.shape[0]},)")
        if targets is not None:
            if not self.supports_targeted:
                raise ConfigError(f"attack '{self.id}' does not support targeted attacks")
            if targets.dtype != torch.int64 or targets.shape != y.shape:
                raise ConfigError(f"attack '{self.id}': targets must be int64 shaped like y")
        if not self.minimal and eps is None:
            raise ConfigError(f"attack '{self.id}' is a fixed-budget attack and needs eps")
        try:
            return self.threat_model(eps, targets is not None)
        except ValueError as exc:
            raise ConfigError(f"attack '{self.id}': eps: {exc}") from None

    def _result(self, x, y, x_adv, adv_pred, targets, queries, threat, details=None) -> AttackResult:
        success = adv_pred == targets if targets is not None else adv_pred != y
        distance = threat.norm.measure(x_adv - x)
        if self.minimal:
            distance = torch.where(success, distance, torch.full_like(distance, float("inf")))
        return AttackResult(x_adv, success, distance, queries, threat.norm, threat.eps, details)


def _unpack(out: Any, ledger: QueryLedger | None, n: int, device: torch.device,
            attack_id: str) -> tuple[Any, torch.Tensor]:
    x_adv, queries = (out.x_adv, out.queries) if isinstance(out, RunOutput) else (out, None)
    if ledger is not None:
        return x_adv, ledger.counts  # black-box: the harness's count, never the plugin's
    if queries is None:
        return x_adv, torch.zeros(n, dtype=torch.long, device=device)
    queries = torch.as_tensor(queries)
    if queries.shape != (n,):
        raise AttackError(f"attack '{attack_id}' reported queries of shape {tuple(queries.shape)}, expected ({n},)")
    return x_adv, queries.detach().to(device=device, dtype=torch.long)


def _check_details(details: Any, attack_id: str) -> dict[str, Any] | None:
    """An attack's ``details``: a dict that survives a JSON round trip (it is stored as such)."""
    if details is None:
        return None
    import json
    try:
        if not isinstance(details, dict):
            raise TypeError(type(details).__name__)
        return json.loads(json.dumps(details, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise AttackError(f"attack '{attack_id}' reported details that are not a JSON object: {exc}") from None


def merge_details(total: dict[str, Any] | None, part: dict[str, Any] | None) -> dict[str, Any] | None:
    """Details of two batches as one: numbers are added, dicts merged key by key, lists of dicts
    with a ``name`` merged by name (in first-seen order), anything else kept from the first."""
    if part is None:
        return total
    if total is None:
        return json_copy(part)
    out = dict(total)
    for key, value in part.items():
        if key not in out:
            out[key] = json_copy(value)
        else:
            out[key] = _merged(out[key], value)
    return out


def _merged(a: Any, b: Any) -> Any:
    if isinstance(a, bool) or isinstance(b, bool):
        return a
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        return merge_details(a, b)
    if isinstance(a, list) and isinstance(b, list) and all(isinstance(v, dict) and "name" in v for v in a + b):
        names = {v["name"]: i for i, v in enumerate(a)}
        out = [dict(v) for v in a]
        for v in b:
            if v["name"] in names:
                out[names[v["name"]]] = merge_details(out[names[v["name"]]], v)
            else:
                names[v["name"]] = len(out)
                out.append(json_copy(v))
        return out
    return a


def json_copy(value: Any) -> Any:
    import json
    return json.loads(json.dumps(value))


def _check_output(x_adv: Any, x: torch.Tensor, attack_id: str) -> None:
    if isinstance(x_adv, torch.Tensor) and type(x_adv) is not torch.Tensor:  # a subclass could lie to the judge
        raise AttackError(f"attack '{attack_id}' returned a {type(x_adv).__name__}, expected a plain torch.Tensor")
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        shape = tuple(getattr(x_adv, "shape", ()))
        raise AttackError(f"attack '{attack_id}' returned shape {shape}, expected {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AttackError(f"attack '{attack_id}' returned NaN or infinite values")


def _check_labels(y: torch.Tensor, targets: torch.Tensor | None, k: int, attack_id: str) -> None:
    for name, t in (("y", y), ("targets", targets)):
        if t is not None and t.numel() and (t.min() < 0 or t.max() >= k):
            raise ConfigError(f"attack '{attack_id}': {name} must lie in [0, {k})")


def _logits(model: Model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# ------------------------------------------------------------ the model as the attack found it

_CONTAINERS = {"_parameters": "parameter", "_buffers": "buffer", "_modules": "module"}
_HOOKS = {"_forward_hooks": "forward hook", "_forward_pre_hooks": "forward pre-hook",
          "_backward_hooks": "backward hook", "_backward_pre_hooks": "backward pre-hook"}
_HOOK_FLAGS = {"_forward_hooks_with_kwargs": "forward hook", "_forward_hooks_always_called": "forward hook",
               "_forward_pre_hooks_with_kwargs": "forward pre-hook"}
_QUIET = {"training", "_is_full_backward_hook", "_non_persistent_buffers_set"}  # restored, not reported
_SCALARS = (bool, int, float, complex, str, bytes, type(None))
_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class ModelSnapshot:
    """A model's state as an attack found it, to tell exactly what the attack changed and undo it.

    Covers every submodule's class, instance attributes, parameters and buffers (names, objects,
    values bit for bit, dtype, shape, device; plain tensor attributes too), submodules, and
    forward / forward-pre / backward / backward-pre hooks, plus torch's global module hooks, and
    the attributes and modules of the defense object given to an adaptive attack (``context``).
    Training-mode flags and parameters' ``.grad`` are restored without being reported. Class- or
    library-level monkey-patching is beyond an in-process check.

    Cost: one copy of every parameter and buffer per attack call (memory: the model's size; time:
    one memcpy), and at the end one bitwise comparison per tensor (``torch.equal`` on the CPU;
    elsewhere flags stacked for one host sync per device); dicts of hooks and attributes are
    copied shallowly.
    """

    def __init__(self, model: Any, context: Any = None) -> None:
        mods = _modules_of(model, context)
        keep = (*_CONTAINERS, *_HOOKS, *_HOOK_FLAGS, "_non_persistent_buffers_set")
        self._modules = [(m, name, type(m), dict(vars(m)), {k: _contents(vars(m)[k]) for k in keep
                                                             if isinstance(vars(m).get(k), (dict, set))})
                         for name, m in mods]
        self._tensors: dict[int, tuple[torch.Tensor, str, torch.Tensor, Any]] = {}
        for m, name, _, attrs, _ in self._modules:
            for kind, items in (("parameter", getattr(m, "_parameters", {})), ("buffer", getattr(m, "_buffers", {})),
                                ("tensor attribute", attrs)):
                for key, t in items.items():
                    if isinstance(t, torch.Tensor) and id(t) not in self._tensors:
                        grad = t.grad if isinstance(t, nn.Parameter) else None
                        label = f"{kind} {name}.{key}" if name else f"{kind} {key}"
                        self._tensors[id(t)] = (t, label, t.detach().clone(), grad)
        names = [f"_global{k}" for k in (*_HOOKS, *_HOOK_FLAGS)] + ["_global_is_full_backward_hook"]
        self._globals = {k: (getattr(_torch_module, k), _contents(getattr(_torch_module, k)))
                         for k in names if hasattr(_torch_module, k)}

    def changes(self) -> list[str]:
        """What differs from the snapshot, one phrase per change (modules, tensors, global hooks)."""
        out: list[str] = []
        for m, name, cls, attrs, saved in self._modules:
            where, now = name or "the model", vars(m)
            if type(m) is not cls:
                out.append(f"changed the class of {where}")
            out += [f"attribute '{k}' of {where}" for k in attrs.keys() | now.keys()
                    if k not in _QUIET and k not in saved
                    and not (k in now and k in attrs and self._same_value(attrs[k], now[k]))]
            for key, before in saved.items():
                out += _diff(key, before, _contents(now.get(key)), name, f"on {where}")
        out += self._tensor_changes()
        for key, (_, before) in self._globals.items():
            out += _diff(key[len("_global"):], before, _contents(getattr(_torch_module, key)), "", "", "global ")
        return out

    def _same_value(self, before: Any, now: Any) -> bool:
        """An attribute still holds what it held: the same object, an equal scalar, or a tensor
        equal bit for bit to the one it held (a forward pre-hook such as ``weight_norm``'s
        recomputes its tensor attribute on every call)."""
        if before is now or (type(before) is type(now) and isinstance(before, _SCALARS) and before == now):
            return True
        saved = self._tensors.get(id(before)) if isinstance(before, torch.Tensor) else None
        return (saved is not None and saved[0] is before and type(now) is type(before)
                and _exactly(now, saved[2]))

    def _tensor_changes(self) -> list[str]:
        out, changed_on_cpu, compared = [], [], []
        for t, label, copy, _ in self._tensors.values():
            meta = [f"{what} {a} -> {b}" for what, a, b in (
                ("dtype", copy.dtype, t.dtype), ("shape", tuple(copy.shape), tuple(t.shape)),
                ("device", copy.device, t.device)) if a != b]
            if meta:
                out.append(f"{label} ({', '.join(meta)})")
            elif t.device.type == "cpu":  # no host sync to batch: one pass, no flag tensor (~2x faster)
                if not torch.equal(_bits(t.detach()), _bits(copy)):
                    changed_on_cpu.append(f"{label} (values)")
            else:
                compared.append((label, torch.ne(_bits(t.detach()), _bits(copy)).any()))
        out += changed_on_cpu
        for device in {flag.device for _, flag in compared}:  # one host sync per device
            rows = [(label, flag) for label, flag in compared if flag.device == device]
            flags = torch.stack([flag for _, flag in rows]).tolist()
            out += [f"{label} (values)" for (label, _), bad in zip(rows, flags) if bad]
        return out

    def restore(self) -> list[str]:
        """Put everything back as it was; returns what had changed (empty: nothing did)."""
        changes = self.changes()
        for m, _, cls, attrs, saved in self._modules:
            if type(m) is not cls:
                object.__setattr__(m, "__class__", cls)
            vars(m).clear()
            vars(m).update(attrs)
            for key, before in saved.items():
                attrs[key].clear()
                attrs[key].update(before)
        with torch.no_grad():
            for t, _, copy, grad in self._tensors.values():
                if changes and not _exactly(t, copy):
                    if (t.dtype, t.shape, t.device) == (copy.dtype, copy.shape, copy.device):
                        t.copy_(copy)  # in place: storage shared with views and tied weights stays shared
                    else:
                        t.data = copy
                if isinstance(t, nn.Parameter) and t.grad is not grad:
                    t.grad = grad
        for key, (obj, before) in self._globals.items():
            setattr(_torch_module, key, obj)
            if isinstance(obj, dict):
                obj.clear()
                obj.update(before)
        return changes


def _modules_of(model: Any, context: Any) -> list[tuple[str, Any]]:
    """Every module of ``model`` and of an adaptive attack's defense object ``context`` (its
    attributes, say a detector's threshold, and the modules it holds), each once, with a name."""
    roots = [("", model)] if isinstance(model, nn.Module) else []
    out: list[tuple[str, Any]] = []
    if context is not None and hasattr(context, "__dict__") and not isinstance(context, nn.Module):
        out.append(("context", context))
        roots += [(f"context.{k}", v) for k, v in vars(context).items() if isinstance(v, nn.Module)]
    elif isinstance(context, nn.Module):
        roots.append(("context", context))
    seen = {id(context)} if out else set()
    for prefix, root in roots:
        for name, m in root.named_modules(prefix=prefix):
            if id(m) not in seen:
                seen.add(id(m))
                out.append((name, m))
    return out


def _diff(key: str, before: Any, now: Any, name: str, where: str, scope: str = "") -> list[str]:
    """The changes between two ``_contents`` of the module attribute ``key`` (a dict)."""
    if not isinstance(before, list):
        return []
    old, new = dict(before), dict(now) if isinstance(now, list) else {}
    if key in _CONTAINERS:
        label = f"{_CONTAINERS[key]} {name}." if name else f"{_CONTAINERS[key]} "
        return ([f"added {label}{k}" for k in new.keys() - old.keys()]
                + [f"removed {label}{k}" for k in old.keys() - new.keys()]
                + [f"replaced {label}{k}" for k in old.keys() & new.keys() if old[k] is not new[k]])
    what = f"{scope}{_HOOKS.get(key) or _HOOK_FLAGS.get(key, key)}{' ' if where else ''}{where}"
    if key in _HOOK_FLAGS:
        return [f"changed the flags of a {what}"] if old != new else []
    out = ([f"registered a {what}"] * bool(new.keys() - old.keys())
           + [f"removed a {what}"] * bool(old.keys() - new.keys())
           + [f"replaced a {what}"] * any(old[k] is not new[k] for k in old.keys() & new.keys()))
    if not out and list(old) != list(new):
        out.append(f"reordered the hooks ({what})")
    return out


def _contents(obj: Any) -> Any:
    """A shallow copy of a dict (its items, in order) or set; other objects as they are."""
    if isinstance(obj, dict):
        return list(obj.items())
    return set(obj) if isinstance(obj, set) else obj


def _bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` with floating-point values reinterpreted as integers, so comparison is bit for bit
    (NaN equals itself, -0.0 differs from 0.0)."""
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.is_floating_point() and t.element_size() in _BITS:
        return t.view(_BITS[t.element_size()])
    return t


def _exactly(t: torch.Tensor, copy: torch.Tensor) -> bool:
    return ((t.dtype, t.shape, t.device) == (copy.dtype, copy.shape, copy.device)
            and bool(torch.equal(_bits(t.detach()), _bits(copy))))


def off_target(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` for crafting on a model other than the one that judges the result (a transfer
    surrogate, a substitute, the base classifier of a gray-box view). An attack that can stop a
    sample at its first adversarial point (an ``early_stop`` config field) runs every step
    instead, unless the configuration sets it: a point just across the crafting model's boundary
    rarely fools the judged model."""
    if "early_stop" in getattr(getattr(cls, "Config", None), "model_fields", {}) and "early_stop" not in params:
        return {**params, "early_stop": False}
    return dict(params)


class FixedBudgetAttack(Attack):
    """An attack that searches within a given ε-ball (``eps`` required)."""


class MinimalAttack(Attack):
    """A minimal-perturbation attack: ignores ``eps``, reports distances for every budget."""

    minimal: ClassVar[bool] = True
