"""What identifies a result, so that a tournament never computes the same thing twice.

A match's result is determined by the model it attacks, the attack, the budget and the samples
it is evaluated on. :func:`keys` hashes each of those from the plan alone, before anything is
built:

- the **evaluated samples**: the dataset entry (id and params), the seed (which also seeds the
  splits, training and every attack call), ``samples``, ``batch_size`` (attack calls are seeded
  per batch) and ``judge_passes``;
- the **model**: the defense's id and its resolved config (``[training]`` and presets merged
  in), its architecture, the keys of the entries it wraps (``on``) or fine-tunes
  (``finetune_from``), the SHA-256 of every file its params name (a model file, a weights file),
  and the distribution and version of each plugin involved (a new release of a plugin's package
  recomputes what it touched; the built-in plugins carry the arena's version);
- the **attack**: its id and resolved config, its view (direct, gray-box, transfer and the key
  of the surrogate's model), its targets, its plugin's version, and in a cascade the keys of the
  earlier attacks whose survivors it attacks;
- the **metrics** measured on the model or the match (their ids, labels and configs).

A model row's key covers the evaluated samples, the model and its model metrics; a match row's
key adds the attack, the budget and its match metrics. What does not change a result (an entry's
name, ``match_timeout``, the executor, the order of entries outside a cascade) is not part of a
key, so renaming an entry or moving it in the file reuses its results. A change to the source of
a user's own module (an ``import`` architecture's factory) is not seen: use ``arena run --fresh``.

Keys say nothing of the floating-point bits of training on another machine (the model cache's
:func:`~arena.tournament.cache.numerics`): the runner checks instead that a rebuilt entrant's
cache key and clean predictions equal those its reused matches were computed on, and recomputes
them where they differ.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from arena.tournament.cache import content_key
from arena.tournament.plan import AttackPlan, Plan


@dataclass(frozen=True)
class Keys:
    """The key of every model row (by defense label) and every match row (by (defense, attack,
    budget)) that a plan stores."""

    models: dict[str, str]
    matches: dict[tuple[str, str, float], str]


def keys(plan: Plan) -> Keys:
    """Every model and match key of ``plan`` (see the module docstring for what goes in)."""
    cfg = plan.config
    samples = content_key(kind="samples", dataset=plan.dataset.model_dump(mode="json"), seed=cfg.seed,
                          samples=cfg.samples, batch_size=cfg.batch_size, judge_passes=cfg.judge_passes,
                          files=fingerprint(plan.dataset.params),
                          **({"autocast": cfg.speed.autocast} if cfg.speed.autocast != "off" else {}))
    owners = plan.registry.owners
    defense_keys: dict[str, str] = {}
    for d in plan.defenses:  # dependency order: parents first
        config = d.defense.config.model_dump(mode="json")
        defense_keys[d.label] = content_key(
            kind="defense", id=d.id, config=config, architecture=d.architecture.model_dump(mode="json"),
            on=defense_keys.get(d.on) if d.on else None,
            finetune_from=defense_keys.get(d.finetune_from) if d.finetune_from else None,
            files=fingerprint(config) + fingerprint(d.architecture.params),
            code=[_version(owners, "defenses", d.id), _version(owners, "architectures", d.architecture.id),
                  _version(owners, "datasets", plan.dataset.id)])
    models = {label: content_key(kind="model", samples=samples, defense=key,
                                 metrics=_metrics(plan, label, None))
              for label, key in defense_keys.items()}
    attack_keys = {a.label: _attack_key(a, defense_keys, owners) for a in plan.attacks}
    matches: dict[tuple[str, str, float], str] = {}
    for i, a in enumerate(plan.attacks):
        earlier = _cascade(plan, i) if cfg.cascade else []
        for d in plan.defenses:
            if not a.faces(d.label):
                continue
            for b in a.budgets:
                matches[(d.label, a.label, b)] = content_key(
                    kind="match", samples=samples, defense=defense_keys[d.label], attack=attack_keys[a.label],
                    budget=b, cascade=[attack_keys[e] for e in earlier], metrics=_metrics(plan, d.label, a.label))
    return Keys(models, matches)


@dataclass(frozen=True)
class Stored:
    """What a database already holds of a plan: by (defense, attack, budget), the key, the
    newest ``ok`` row stored under it and the :func:`~arena.tournament.store.model_basis` it
    stands on; by defense label, the newest model row stored under its model key."""

    matches: dict[tuple[str, str, float], tuple[str, Any, str]]
    models: dict[str, Any]


def stored(store: Any, plan_keys: Keys, have: set[tuple[str, str, float]] = frozenset()) -> Stored:
    """The results of ``store`` that a run of the plan can take instead of computing them
    (leaving out the pairs in ``have``). A match row is taken only when it stands on the same
    model (cache key and clean predictions) as the model row that would be taken with it."""
    from arena.tournament.store import model_basis

    wanted = {pair: k for pair, k in plan_keys.matches.items() if pair not in have}
    rows = store.stored_matches(set(wanted.values()))
    by_key = store.stored_models(set(plan_keys.models.values()))
    models = {label: by_key[k] for label, k in plan_keys.models.items() if k in by_key}
    sources: dict[int, dict[str, Any]] = {}  # an earlier run's model rows, by defense
    matches = {}
    for pair, key in wanted.items():
        match = rows.get(key)
        if match is None:
            continue
        if match.run_id not in sources:
            sources[match.run_id] = {m.defense: m for m in store.models(match.run_id)}
        source = sources[match.run_id].get(match.defense)
        if source is None:
            continue
        basis = model_basis(source.cache_key, source.clean_mask)
        model = models.get(pair[0])
        if model is not None and model_basis(model.cache_key, model.clean_mask) != basis:
            continue  # stands on another build of the model than the one taken
        matches[pair] = (key, match, basis)
    return Stored(matches, models)


def _attack_key(a: AttackPlan, defense_keys: dict[str, str], owners: Any) -> str:
    return content_key(kind="attack", id=a.id, config=a.attack.config.model_dump(mode="json"),
                       view=a.view.kind.value, surrogate=defense_keys.get(a.view.surrogate) if a.view.surrogate
                       else None, targets=a.targets, code=_version(owners, "attacks", a.id))


def _cascade(plan: Plan, index: int) -> list[str]:
    """The labels of the direct attacks before ``plan.attacks[index]`` whose survivors it
    attacks in a cascade (those of its norm; a transfer attack is not cascaded)."""
    attack = plan.attacks[index]
    if attack.view.surrogate is not None:
        return []
    norm = attack.attack.threat_norm
    return [a.label for a in plan.attacks[:index]
            if a.view.surrogate is None and a.attack.threat_norm is norm]


def _metrics(plan: Plan, defense: str, attack: str | None) -> list[Any]:
    return sorted(([mp.label, mp.id, mp.metric.config.model_dump(mode="json"), mp.plugin]
                   for mp in plan.metrics_for(defense, attack)), key=lambda m: m[0])


def _version(owners: Any, kind: str, plugin_id: str) -> str:
    owner = owners.get((kind, plugin_id))
    return f"{owner.distribution} {owner.version}" if owner is not None else ""


def fingerprint(value: Any, key: str = "") -> list[str]:
    """What the files a (nested) config value names hold, in the order found: the SHA-256 of
    each existing file, and for a folder given under a key that names one (``path``,
    ``test_path``, ``root``, ``dir``: an image tree) a digest of the relative path, size and
    modification time of every file under it. Empty where it names none, so that a key that
    includes it is unchanged for configs without files."""
    out: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out += fingerprint(v, str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            out += fingerprint(v, key)
    elif isinstance(value, str) and 0 < len(value) < 4096:
        try:
            path = Path(value).expanduser()
            if path.is_file():
                stat = path.stat()
                out.append(_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns))
            elif path.is_dir() and any(word in key for word in ("path", "root", "dir", "folder")):
                out.append(_listing(path))
        except (OSError, ValueError):
            pass
    return out


def _listing(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return "dir:" + digest.hexdigest()


@lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's SHA-256 (cached by path, size and modification time)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
