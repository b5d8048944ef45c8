"""Leaderboard plots with matplotlib (Agg backend), each written as PNG and SVG.

- ``accuracy_vs_budget``: for each attack, adversarial accuracy against the budget, one line per
  defense, starting from the clean accuracy at budget 0 (seed 000's Figures 2-3). The unbounded
  row of a minimal-perturbation attack (budget ∞) has no place on the axis; its value is given
  in the legend instead.
- ``heatmap``: defense × attack robust accuracy at one budget per norm, annotated cells, with the
  per-example worst case over the norm's attacks as a last column.

File names are deterministic (slugs of the attack names, norms and budgets, cut to
:data:`SLUG_LIMIT` characters plus a hash of the whole name when longer), and so is the content:
SVG ids are salted with a constant and no dates are written. A heatmap's worst case that lacks an
attack it should cover (:mod:`arena.leaderboard.coverage`) is annotated with a ``*``.
"""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

from arena.errors import ConfigError
from arena.leaderboard.coverage import Coverage
from arena.leaderboard.formats import MARKER
from arena.leaderboard.labels import budget_label
from arena.leaderboard.tables import worst_case
from arena.tournament.store import MatchRecord, ModelRecord, RunRecord, Store

SLUG_LIMIT = 80  # characters of a slug kept before the hash: file names stay far below 255 bytes
LABEL_LIMIT = 40  # characters of a name shown on a plot

FORMATS = ("png", "svg")
_METADATA = {"png": {"Software": None}, "svg": {"Date": None}}
# Names are shown as written (no $...$ mathtext); SVG ids and glyphs do not vary between runs.
_STYLE = {"text.parse_math": False, "svg.hashsalt": "arena", "svg.fonttype": "path"}


def slugify(text: str) -> str:
    """A lower-case file-name slug: runs of anything but ASCII letters and digits become one dash;
    one longer than :data:`SLUG_LIMIT` is cut there and gets 8 hex digits of the SHA-256 of the
    whole text, so that names that differ only after the cut keep apart."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"
    if len(slug) <= SLUG_LIMIT:
        return slug
    digest = hashlib.sha256(str(text).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{slug[:SLUG_LIMIT].rstrip('-')}-{digest}"


def _short(text: str) -> str:
    """A name as shown on a plot: cut to :data:`LABEL_LIMIT` characters with an ellipsis."""
    return text if len(text) <= LABEL_LIMIT else text[:LABEL_LIMIT - 1] + "…"


def unique_slugs(names: list[str]) -> dict[str, str]:
    """Map each name to a slug that no other name in ``names`` shares (``-2``, ``-3`` on clashes)."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in dict.fromkeys(names):
        base = slug = slugify(name)
        n = 2
        while slug in taken:
            slug, n = f"{base}-{n}", n + 1
        out[name] = slug
        taken.add(slug)
    return out


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or a user error saying how to install it."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("plots need matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out_dir: Path, stem: str) -> list[Path]:
    """Write ``fig`` as ``stem.png`` and ``stem.svg`` with reproducible content, then close it."""
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, format=fmt, dpi=120, bbox_inches="tight", metadata=_METADATA[fmt])
        paths.append(path)
    _pyplot().close(fig)
    return paths


def _run_data(store: Store, run_id: int | None) -> tuple[int, list[ModelRecord], list[MatchRecord]]:
    """The run id (newest by default), its model records and its match records."""
    run_id = run_id if run_id is not None else store.latest_run()
    if run_id is None or store.run(run_id) is None:
        raise ConfigError(f"{store.path}: no tournament run found")
    return run_id, store.models(run_id), store.matches(run_id)



def accuracy_vs_budget(store: Store, run_id: int | None, out_dir: str | Path) -> list[Path]:
    """For each attack, adversarial accuracy (%) versus budget, one line per defense.

    Budget 0 is the clean accuracy; failed matches leave a gap; the unbounded row (∞) of a
    minimal attack is reported in the legend. Writes ``accuracy-<attack>.png`` and ``.svg``.
    """
    run_id, models, matches = _run_data(store, run_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    attacks = list(dict.fromkeys(m.attack for m in matches))
    slugs = unique_slugs(attacks)
    paths: list[Path] = []
    with _pyplot().rc_context(_STYLE):
        for attack in attacks:
            fig = _accuracy_figure(attack, [m for m in matches if m.attack == attack], models)
            paths += _save(fig, out_dir, f"accuracy-{slugs[attack]}")
    return paths


def _accuracy_figure(attack: str, rows: list[MatchRecord], models: list[ModelRecord]) -> Any:
    """One attack's accuracy-versus-budget figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    first = rows[0]
    for model in models:
        d = model.defense
        mine = sorted((m for m in rows if m.defense == d), key=lambda m: m.budget)
        xs, ys = [0.0], [100 * model.clean_accuracy]
        for m in mine:
            if not math.isinf(m.budget):
                xs.append(m.budget)
                ys.append(_pct(m))
        ax.plot(xs, ys, marker="o", label=_short(d) + _unbounded_label(mine))
    _budget_axis(ax, rows)
    ax.set_xlabel(f"budget ε ({first.norm})")
    ax.set_ylabel("adversarial accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"{_short(attack)} ({_short(first.attack_id)}, {first.knowledge})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _budget_axis(ax: Any, rows: list[MatchRecord]) -> None:
    """Start the budget axis at 0 and, if no match of the attack succeeded, say so on the plot."""
    finite = [m.budget for m in rows if not math.isinf(m.budget)]
    top = max(finite, default=0.0) or 1.0
    ax.set_xlim(-0.03 * top, 1.03 * top)
    if not any(m.ok for m in rows):
        ax.text(0.5, 0.5, "every match of this attack failed to run\n(see the notes)", transform=ax.transAxes,
                ha="center", va="center", color="#a61b1b")


def _pct(m: MatchRecord) -> float:
    """A match's robust accuracy in percent, NaN (a gap in the line) unless it succeeded."""
    ok = m.ok and m.robust_accuracy is not None
    return 100 * m.robust_accuracy if ok else math.nan


def _unbounded_label(rows: list[MatchRecord]) -> str:
    """`` (ε=∞: 3.0%)`` for a defense with an unbounded row, else an empty string."""
    inf = [m for m in rows if math.isinf(m.budget)]
    if not inf:
        return ""
    value = _pct(inf[0])
    return f" (ε=∞: {inf[0].status})" if math.isnan(value) else f" (ε=∞: {value:.1f}%)"


def default_budgets(matches: list[MatchRecord]) -> dict[str, float]:
    """For each norm, the median of the finite budgets present (the lower middle one if even)."""
    out = {}
    for norm in sorted({m.norm for m in matches}):
        budgets = sorted({m.budget for m in matches if m.norm == norm and not math.isinf(m.budget)})
        if budgets:
            out[norm] = budgets[(len(budgets) - 1) // 2]
    return out


def _chosen_budgets(matches: list[MatchRecord], budget: float | None) -> dict[str, float]:
    """The budget to plot for each norm; a budget given explicitly keeps the norms that have it."""
    if budget is None:
        return default_budgets(matches)
    chosen = {n: budget for n in sorted({m.norm for m in matches})
              if any(m.norm == n and m.budget == budget for m in matches)}
    if not chosen:
        present = ", ".join(budget_label(b) for b in sorted({m.budget for m in matches}))
        raise ConfigError(f"no match at budget {budget_label(budget)}; budgets present: {present}")
    return chosen


def heatmap(store: Store, run_id: int | None, out_dir: str | Path, budget: float | None = None) -> list[Path]:
    """Defense × attack robust accuracy (%) at one budget per norm, annotated.

    ``budget=None`` takes, for each norm, the median budget present. Writes
    ``heatmap-<norm>-<budget>.png`` and ``.svg``.
    """
    run_id, models, matches = _run_data(store, run_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    run = store.run(run_id)
    with _pyplot().rc_context(_STYLE):
        for norm, eps in _chosen_budgets(matches, budget).items():
            fig = _heatmap_figure(norm, eps, models, _heatmap_grid(run, models, matches, norm, eps))
            paths += _save(fig, out_dir, f"heatmap-{slugify(norm)}-{budget_label(eps, ascii=True)}")
    return paths


def _heatmap_grid(run: RunRecord, models: list[ModelRecord], matches: list[MatchRecord], norm: str,
                  eps: float) -> tuple[list[str], list[list[float]], list[list[str]]]:
    """Column labels, values (NaN where no result) and cell texts of the heatmap at (``norm``,
    ``eps``); an incomplete worst case is annotated with a ``*``."""
    coverage = Coverage(run, models, matches)
    rows = [m for m in matches if m.norm == norm and m.budget == eps]
    attacks = list(dict.fromkeys(m.attack for m in rows))
    by_key = {(m.defense, m.attack): m for m in rows}
    values, texts = [], []
    for model in models:
        line_v, line_t = [], []
        for a in attacks:
            m = by_key.get((model.defense, a))
            v = math.nan if m is None else _pct(m)
            line_v.append(v)
            line_t.append("–" if m is None else m.status if math.isnan(v) else f"{v:.1f}")
        worst = worst_case(model, [by_key[(model.defense, a)] for a in attacks if (model.defense, a) in by_key])
        mark = MARKER if coverage.worst_gaps(model.defense, norm, eps) else ""
        line_v.append(math.nan if worst is None else 100 * worst)
        line_t.append(("–" if worst is None else f"{100 * worst:.1f}") + mark)
        values.append(line_v)
        texts.append(line_t)
    return attacks + ["worst case"], values, texts


def _heatmap_figure(norm: str, eps: float, models: list[ModelRecord],
                    grid: tuple[list[str], list[list[float]], list[list[str]]]) -> Any:
    """One norm's annotated heatmap at budget ``eps``."""
    plt = _pyplot()
    import matplotlib
    import numpy as np

    columns, values, texts = grid
    data = np.ma.masked_invalid(np.array(values, dtype=float))
    fig, ax = plt.subplots(figsize=(1.3 * len(columns) + 2.5, 0.5 * len(models) + 1.8))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    image = ax.imshow(data, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(columns)), [_short(c) for c in columns], rotation=30, ha="right")
    ax.set_yticks(range(len(models)), [_short(m.defense) for m in models])
    ax.axvline(len(columns) - 1.5, color="white", linewidth=3)
    for i, line in enumerate(texts):
        for j, text in enumerate(line):
            v = values[i][j]
            color = "black" if math.isnan(v) or v >= 50 else "white"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize="small")
    incomplete = any(line[-1].endswith(MARKER) for line in texts)
    ax.set_title(f"robust accuracy (%) at ε={budget_label(eps)} ({norm})"
                 + (f"\n{MARKER} incomplete: an attack it covers did not finish ok" if incomplete else ""))
    fig.colorbar(image, ax=ax, label="%")
    return fig
