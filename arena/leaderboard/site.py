"""``arena publish``: a self-contained static site for one tournament run.

The site needs no server and no network (local CSS and JS only, enforced by a
Content-Security-Policy), so it can be opened from disk or copied to any static host::

    index.html              leaderboard per norm (sortable), metrics, plots, notes, reproduce, provenance
    matches/<d>--<a>--<eps>.html   one page per match: status, metrics, error, config, provenance
    defenses/<d>.html       one page per defense: its training config, metrics and every match it played
    plots/*.png, *.svg      accuracy versus budget per attack, heatmaps per norm
    assets/                 site.css, sort.js, favicon.svg
    <name>.toml             the tournament file, for `arena run`
    results.json, results.csv   the leaderboard for machines
    .arena-site             marker: this directory may be rewritten by `arena publish`

Every text from the database goes through ``html.escape`` (numbers too: SQLite keeps any text a
crafted file puts in a number's column), every link is built from slugs and URL-quoted, and file
names are slugs bounded in length (:func:`arena.leaderboard.plots.slugify`). An incomplete worst
case (see :mod:`arena.leaderboard.coverage`) is marked with ``*`` in its cell (class
``incomplete``, its explanation as the cell's title and in a footnote under the table), its row
is shown unranked (``–`` in the ``#`` column), and each match page says whether the worst case at
its budget is complete. Every accuracy shows its 95 % Wilson interval under it
(:mod:`arena.leaderboard.stats`; the sample count in the table's caption and the interval's
title); a norm's table puts its ranking columns (rank, defense, clean, worst cases) first and lets
its headers wrap, so that they show in a 1280 px window without scrolling sideways; a defense a
sanity check flagged carries a ⚑ (its flags as the title) and a legend under the table. A folder
that cannot be written is a :class:`~arena.errors.ConfigError`.
"""
from __future__ import annotations

import hashlib
import math
import shutil
from dataclasses import dataclass, field
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from arena.errors import ConfigError
from arena.leaderboard import plots, stats, tables
from arena.leaderboard.coverage import Mark
from arena.leaderboard.formats import MARKER as INCOMPLETE
from arena.leaderboard.labels import budget_label
from arena.leaderboard.markup import facts, fmt, is_number, json_pre, link, when
from arena.tournament.store import MatchRecord, ModelRecord, RunRecord, Store

MARKER = ".arena-site"
ASSETS = ("site.css", "sort.js", "favicon.svg")
OWNED_DIRS = ("matches", "defenses", "plots", "assets")
CSP = "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'"


@dataclass
class Site:
    """Everything the page writers need about one run."""

    out: Path
    run: RunRecord
    board: tables.Leaderboard
    models: list[ModelRecord]
    matches: list[MatchRecord]
    defense_slugs: dict[str, str]
    attack_slugs: dict[str, str]
    toml_name: str
    by_column: dict = field(default_factory=dict)
    by_label: dict = field(default_factory=dict)
    worst: dict = field(default_factory=dict)
    built: set = field(default_factory=set)

    @property
    def provenance(self) -> dict[str, Any]:
        return self.run.provenance

    def __post_init__(self) -> None:
        """Index the matches by (defense, column header) and (defense, attack, budget label), and
        the worst cases by (defense, norm, budget label): (value, mark or None)."""
        self.built = {m.defense for m in self.models}
        for m in self.matches:
            label = budget_label(m.budget)
            self.by_column[(m.defense, f"{m.attack} ε={label}")] = m
            self.by_label[(m.defense, m.attack, label)] = m
        for s in self.board.sections:
            for i, row in enumerate(s.rows):
                for j, header in enumerate(s.headers):
                    if header.startswith("worst ε="):
                        self.worst[(row[0], s.norm, header[len("worst ε="):])] = (row[j], s.marks.get((i, j)))

    def match_href(self, m: MatchRecord) -> str:
        """The match page's path relative to the site root (slugs: nothing to quote)."""
        return (f"matches/{self.defense_slugs[m.defense]}--{self.attack_slugs[m.attack]}"
                f"--{budget_label(m.budget, ascii=True)}.html")

    def defense_href(self, defense: str) -> str | None:
        """The defense page's path relative to the site root; None for a defense never built."""
        return f"defenses/{self.defense_slugs[defense]}.html" if defense in self.built else None


def publish(store: Store, run_id: int | None, out_dir: str | Path) -> Path:
    """Write the site of run ``run_id`` (the newest by default) into ``out_dir``; return index.html.

    ``out_dir`` must be new, empty, or a site written before (which is then refreshed); a folder
    that cannot be created or written is a :class:`ConfigError` naming it.
    """
    board = tables.build(store, run_id)
    run_id = run_id if run_id is not None else store.latest_run()
    try:
        return _publish(store, run_id, board, Path(out_dir))
    except OSError as exc:
        reason = exc.strerror or str(exc).splitlines()[0]
        raise ConfigError(f"{out_dir}: cannot write the site there: {reason}") from None


def _publish(store: Store, run_id: int, board: tables.Leaderboard, out_dir: Path) -> Path:
    run = store.run(run_id)
    out = _prepare(out_dir)
    models, matches = store.models(run_id), store.matches(run_id)
    stem = Path(run.source).stem if run.source else run.name
    defenses = [m.defense for m in models] + [m.defense for m in matches]
    site = Site(out, run, board, models, matches,
                plots.unique_slugs(defenses), plots.unique_slugs([m.attack for m in matches]),
                f"{plots.slugify(stem)}.toml")
    _copy_assets(out / "assets")
    figures = plots.accuracy_vs_budget(store, run_id, out / "plots") + plots.heatmap(store, run_id, out / "plots")
    _write_downloads(site)
    for m in site.matches:
        _write(out / site.match_href(m), _page(site, f"{m.attack} vs {m.defense}", _match_body(site, m), 1))
    for model in site.models:
        _write(out / str(site.defense_href(model.defense)),
               _page(site, model.defense, _defense_body(site, model), 1))
    index = out / "index.html"
    _write(index, _page(site, board.title, _index_body(site, [p for p in figures if p.suffix == ".svg"]), 0))
    return index


def _prepare(out: Path) -> Path:
    """Create ``out`` or refresh an earlier site there; refuse to write into someone else's directory."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ConfigError(f"{out}: directory is not empty and holds no arena site; choose a new or empty one")
    for sub in OWNED_DIRS:
        shutil.rmtree(out / sub, ignore_errors=True)
    for sub in OWNED_DIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `arena publish`; this directory is rewritten on the next publish\n")
    return out


def _copy_assets(dest: Path) -> None:
    """Copy the stylesheet, the sorting script and the icon shipped in arena/leaderboard/assets."""
    source = resources.files("arena.leaderboard") / "assets"
    for name in ASSETS:
        (dest / name).write_bytes((source / name).read_bytes())


def _write(path: Path, text: str) -> None:
    """Write UTF-8 text, whatever the locale."""
    path.write_text(text, encoding="utf-8")


def _write_downloads(site: Site) -> None:
    """The tournament file (or, if none was recorded, its configuration) and the results."""
    if site.run.source_text is not None:
        _write(site.out / site.toml_name, site.run.source_text)
    _write(site.out / "results.json", site.board.render("json"))
    _write(site.out / "results.csv", site.board.render("csv"))


# --- page skeleton and small helpers ---------------------------------------------------------

def _page(site: Site, title: str, body: str, depth: int) -> str:
    """A complete HTML5 document; ``depth`` is how many folders below the site root it lives."""
    up = "../" * depth
    version = site.provenance.get("packages", {}).get("adversarial-arena", "?")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\" />\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\" />\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\" />\n"
        f"<title>{escape(title)}</title>\n"
        f"<link rel=\"icon\" href=\"{up}assets/favicon.svg\" type=\"image/svg+xml\" />\n"
        f"<link rel=\"stylesheet\" href=\"{up}assets/site.css\" />\n"
        f"<script src=\"{up}assets/sort.js\" defer=\"defer\"></script>\n</head>\n<body>\n"
        + (f"<p class=\"crumbs\"><a href=\"{up}index.html\">← leaderboard</a></p>\n" if depth else "")
        + body
        + f"\n<footer>Published by <code>arena publish</code> (adversarial-arena {escape(str(version))})"
          f" from run {escape(str(site.run.id))} of <em>{escape(site.run.name)}</em>.</footer>\n</body>\n</html>\n"
    )


# --- the index ---------------------------------------------------------------------------------

def _index_body(site: Site, figures: list[Path]) -> str:
    """The front page: summary, one table per norm, plots, notes, reproduce, provenance."""
    run, n_fail = site.run, sum(not m.ok for m in site.matches)
    norms = " ".join(f"<a href=\"#norm-{plots.slugify(s.norm)}\">{escape(s.norm)}</a>" for s in site.board.sections)
    head = (f"<h1>{escape(run.name)}</h1>\n<p class=\"muted\">{escape(site.board.title)}</p>\n"
            f"<p>Run {escape(str(run.id))} ({escape(str(run.status))}), seed {escape(str(run.seed))}: "
            f"{len(site.defense_slugs)} defenses, "
            f"{len(site.attack_slugs)} attacks, {len(site.matches)} matches ({n_fail} not ok). "
            f"Started {when(run.started)}, finished {when(run.finished)}.</p>\n"
            f"<nav class=\"toc\">Leaderboards: {norms} · "
            + ("<a href=\"#metrics\">metrics</a> " if site.board.metric_sections else "")
            + "<a href=\"#plots\">plots</a> "
            "<a href=\"#notes\">notes</a> <a href=\"#reproduce\">reproduce</a> "
            "<a href=\"#provenance\">provenance</a></nav>\n")
    tables_html = "".join(_section_html(site, s) for s in site.board.sections)
    return (head + "<h2 id=\"leaderboard\">Leaderboard</h2>\n<p class=\"muted\">Accuracy in %, under each "
            "number its 95 % confidence interval (Wilson, over the evaluated samples: the interval covers the "
            "draw of test samples, not the attack's randomness). The per-example worst case over a norm's "
            f"attacks ranks the defenses: {escape(_ranking_html_text(site.board.ranking))}. Click a column header to "
            f"sort, a cell for its match. A {INCOMPLETE} marks an incomplete number: an attack it should cover "
            "did not finish ok, so it is taken over the others only (a worst case then is an upper bound) and "
            "its row is listed unranked, after the ranked rows.</p>\n" + tables_html + _metrics_html(site)
            + _plots_html(figures)
            + _notes_html(site) + _reproduce_html(site) + "<h2 id=\"provenance\">Provenance</h2>\n"
            + _provenance_html(site))


def _ranking_html_text(ranking: dict[str, Any]) -> str:
    """How the board ranked, in words (``rank_by`` of the tournament file)."""
    if ranking.get("by") != "budget":
        return "its mean over the norm's budgets"
    norms = ranking.get("norms") or {}
    chosen = [f"{n} ε={budget_label(b)}" for n, b in norms.items() if b is not None]
    rest = [n for n, b in norms.items() if b is None]
    return ("at each norm's primary budget (" + (", ".join(chosen) or "none applied") + ")"
            + (f", its mean over the budgets in {', '.join(rest)}" if rest else ""))


def _section_html(site: Site, section: tables.Section) -> str:
    """One sortable table: a norm's defenses (rank, clean, attack × budget, worst cases) or the
    attacks' ranking (success against every defense). Cells link to their match pages; the
    incomplete ones carry a marker, their explanation as a title and a footnote under the table.
    In a norm's table the ranking columns (defense, clean, the worst cases) come first, so that
    they show without scrolling sideways however many attacks follow; every accuracy has its 95 %
    interval under it, and a defense a sanity check flagged carries a ⚑ with the flags as its title."""
    defenses = bool(section.headers) and section.headers[0] == "defense"
    order = list(range(1, len(section.headers)))
    if defenses:
        worst = [j for j in order if section.headers[j].startswith("worst ")]
        order = [j for j in order if section.headers[j] == "clean"] + worst + \
            [j for j in order if section.headers[j] != "clean" and j not in worst]
    shown = [0, *order]
    head = "".join(f"<th scope=\"col\"{cls} aria-sort=\"none\"><button type=\"button\">{_header_html(h)}</button></th>"
                   for h, cls in zip(["#", *(section.headers[j] for j in shown)],
                                     ["", " class=\"name\""] + [""] * len(section.headers)))
    ranked = len(section.rows) if section.ranked is None else section.ranked
    flagged = _flags_by_defense(site) if defenses else {}
    body = []
    for i, row in enumerate(section.rows):
        first = site.defense_href(str(row[0])) if defenses else None
        rank = (f"<td data-value=\"{i + 1}\">{i + 1}</td>" if i < ranked else
                "<td class=\"unranked\" data-value=\"\" title=\"not ranked: incomplete\">–</td>")
        cells = [rank, _cell(row[0], first, "name", flags=flagged.get(str(row[0])))]
        for j in order:
            header, value = section.headers[j], row[j] if j < len(row) else None
            mark = section.marks.get((i, j))
            href = _cell_href(site, defenses, row, header, mark)
            kind = "worst" if defenses and header.startswith("worst ") else "acc" if defenses else "rate"
            cells.append(_cell(value, href, "status" if href and isinstance(value, str) else kind, mark,
                               section.intervals.get((i, j))))
        body.append("<tr" + (" class=\"flagged\"" if str(row[0]) in flagged else "") + ">" + "".join(cells)
                    + "</tr>")
    sid = plots.slugify(section.norm)
    n = section.samples
    caption = (f"{section.norm}: accuracy in %, defenses ranked by {section.ranking or 'mean worst case'}; "
               "under each number its 95 % Wilson interval"
               + (f" over n = {n} samples" if n is not None else " (hover it for its sample count)")
               if defenses else
               f"{section.norm}: attacks ranked by mean success against every defense")
    notes = "".join(f"<li>{escape(f'{INCOMPLETE} {section.marks[k]}')}</li>\n" for k in sorted(section.marks))
    notes = f"<ul class=\"footnotes\" id=\"incomplete-{sid}\">\n{notes}</ul>\n" if notes else ""
    if any(str(row[0]) in flagged for row in section.rows):
        notes += (f"<p class=\"legend flags\" id=\"flags-{sid}\"><span class=\"flag\">{FLAG}</span> a sanity check "
                  "flagged this defense: its number may overstate its robustness (hover the marker for what was "
                  "found and which attack to add; every flag is listed under "
                  "<a href=\"#notes\">Notes and sanity flags</a>).</p>\n")
    return (f"<h3 id=\"norm-{sid}\">{escape(section.norm)}</h3>\n<div class=\"scroll\">\n"
            f"<table class=\"leaderboard sortable\" id=\"table-{sid}\">\n<caption>{escape(caption)}</caption>\n"
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>\n</div>\n"
            + notes)


FLAG = "⚑"  # marks a defense a sanity check flagged (arena.leaderboard.flags)


def _header_html(header: str) -> str:
    """A column header that may wrap between its attack and its budget (``pgd-linf`` / ``ε=0.1``)
    but never inside either (not after the hyphen of ``pgd-linf``)."""
    name, sep, budget = header.partition(" ε=")
    if not sep:
        return escape(header)
    return f"<span class=\"nw\">{escape(name)}</span> <span class=\"nw\">ε={escape(budget)}</span>"


def _flags_by_defense(site: Site) -> dict[str, list[str]]:
    """Each flagged defense's sanity flags, as the lines of its marker's title."""
    out: dict[str, list[str]] = {}
    for f in site.board.flags:
        out.setdefault(f.defense, []).append(f"sanity: {f.message} — suggests {f.suggestion}")
    return out


def _cell_href(site: Site, defenses: bool, row: list, header: str, mark: Mark | None) -> str | None:
    """The page a cell links to: its match, for a clean accuracy its defense, for an incomplete
    worst case or score the first match it lacks (where one was stored)."""
    if defenses:
        if header == "clean":
            return site.defense_href(str(row[0]))
        match = site.by_column.get((row[0], header.removesuffix(tables.CONDITIONAL)))
        if match is None and mark is not None and header.startswith("worst ε="):
            label = header[len("worst ε="):]
            match = next((site.by_label[(row[0], g.name, label)] for g in mark.gaps
                          if (row[0], g.name, label) in site.by_label), None)
    else:  # the attacks' table: row = [attack, threat model, ε label, score, vs <defense>..., ...]
        defense = header[3:] if header.startswith("vs ") else None
        if defense is None and mark is not None:
            defense = next((g.name[3:] for g in mark.gaps if (g.name[3:], row[0], str(row[2])) in site.by_label), None)
        match = site.by_label.get((defense, row[0], str(row[2]))) if len(row) > 2 else None
    return site.match_href(match) if match is not None else None


def _cell(value: Any, href: str | None, kind: str, mark: Mark | None = None, interval: Any = None,
          flags: list[str] | None = None) -> str:
    """A table cell. Floats are shares shown in % with a sortable data-value (accuracies also get a
    colour class); numeric text sorts as a number; ``kind`` "status" marks a match that failed;
    ``mark`` an incomplete number (a marker after it, the explanation as its title); ``interval``
    its 95 % interval, drawn under the number (from the ``data-ci`` of an empty span, so that the
    cell's text stays the number), with its sample count as the span's title; ``flags`` the sanity
    flags of a defense's name cell (a ⚑ after the name, the flags as its title)."""
    classes = [kind] if kind in ("name", "worst", "status") else []
    text, data = ("–" if value is None else str(value)), ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text, data = f"{100 * value:.1f}", f"{value:.6g}"
        if kind in ("acc", "worst"):
            classes.append(f"q{min(10, max(0, round(10 * value)))}" if math.isfinite(value) else "q0")
    elif isinstance(value, str) and is_number(value):
        data = value
    elif kind == "rate" and value is not None:
        classes.append("text")
    title = ""
    if mark is not None:
        text += INCOMPLETE
        classes.insert(1 if classes[:1] == ["worst"] else 0, "incomplete")
        title = f" title=\"{escape(str(mark))}\""
    inner = f"<a href=\"{link(href)}\">{escape(text)}</a>" if href else escape(text)
    if interval is not None:
        span = f"{100 * interval.low:.1f}–{100 * interval.high:.1f}"
        about = (f"95 % Wilson interval {span} % ({interval.successes} of {interval.samples} samples)")
        inner += f"<span class=\"ci\" data-ci=\"{escape(span)}\" title=\"{escape(about)}\"></span>"
    if flags:
        classes.append("flagged")
        inner += (f" <span class=\"flag\" role=\"img\" aria-label=\"sanity flag\" "
                  f"title=\"{escape(chr(10).join(flags))}\">{FLAG}</span>")
    cls = f" class=\"{' '.join(classes)}\"" if classes else ""
    return f"<td{cls} data-value=\"{escape(data)}\"{title}>{inner}</td>"


def _metrics_html(site: Site) -> str:
    """The metric tables (per model, then one per match metric), sortable; an ``n/a`` or
    ``failed`` cell says why in its title."""
    if not site.board.metric_sections:
        return ""
    why: dict[tuple[str, str], str] = {}  # (defense, section and column) -> the reason of an n/a or failed cell
    for r in site.board.metric_rows:
        if r["error"]:
            column = r["metric"] if r["scope"] == "model" else f"{r['attack']} ε={budget_label(r['budget'])}"
            why[(r["defense"], ("" if r["scope"] == "model" else r["metric"]) + "|" + column)] = str(r["error"])
    parts = ["<h2 id=\"metrics\">Metrics</h2>\n<p class=\"muted\">The measurements the tournament file asked "
             "for (metric plugins): per model on the evaluated clean samples, per match on its adversarial "
             "examples as judged. ↑: higher is better for the defense, ↓: lower.</p>\n"]
    for section in site.board.metric_sections:
        per_model = section.norm == "metrics per model"
        metric = "" if per_model else section.norm.split(" ")[0]
        sid = "metrics-" + plots.slugify(section.norm)
        head = "".join(f"<th scope=\"col\" aria-sort=\"none\"><button type=\"button\">{escape(h)}</button></th>"
                       for h in section.headers)
        body = []
        for row in section.rows:
            cells = [f"<td class=\"name\">{escape(str(row[0]))}</td>"]
            for header, value in zip(section.headers[1:], row[1:]):
                column = header.split(" ")[0] if per_model else header
                data = escape(str(value)) if isinstance(value, str) and is_number(value) else ""
                reason = why.get((str(row[0]), metric + "|" + column))
                title = f" title=\"{escape(reason)}\"" if reason and not data else ""
                cells.append(f"<td data-value=\"{data}\"{title}>{escape('–' if value is None else str(value))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f"<h3 id=\"{sid}\">{escape(section.norm)}</h3>\n<div class=\"scroll\">\n"
                     f"<table class=\"sortable\" id=\"table-{sid}\">\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
                     + "\n".join(body) + "\n</tbody>\n</table>\n</div>\n")
    return "".join(parts)


def _metric_facts(site: Site, defense: str, attack: str = "", budget: float | None = None) -> str:
    """The metric values of one model (``attack`` '') or of one match, as a table."""
    rows = [r for r in site.board.metric_rows if r["defense"] == defense and (r["attack"] or "") == attack
            and (budget is None or r["budget"] == budget)]
    if not rows:
        return ""

    def value(r: dict[str, Any]) -> str:
        v = r["value"]
        return f"{v:.6g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"

    body = "".join(
        f"<tr><td class=\"name\">{escape(str(r['metric']))}</td><td><code>{escape(str(r['metric_id']))}</code></td>"
        f"<td>{escape(str(r['status']))}</td><td>{escape(value(r))}</td>"
        f"<td>{escape(str(r['error'] or ''))}</td></tr>\n" for r in rows)
    return ("<h2>Metrics</h2>\n<table>\n<thead><tr><th>metric</th><th>plugin</th><th>status</th><th>value</th>"
            "<th>note</th></tr></thead>\n<tbody>\n" + body + "</tbody>\n</table>\n")


def _plots_html(figures: list[Path]) -> str:
    """The SVG figures, each with links to its PNG and SVG files."""
    items = "".join(
        f"<figure><img src=\"{link('plots/' + p.name)}\" alt=\"{escape(p.stem)}\" />"
        f"<figcaption>{escape(p.stem)} · <a href=\"{link('plots/' + p.with_suffix('.png').name)}\">PNG</a> · "
        f"<a href=\"{link('plots/' + p.name)}\">SVG</a></figcaption></figure>\n" for p in figures)
    return ("<h2 id=\"plots\">Plots</h2>\n<p class=\"muted\">Adversarial accuracy versus budget per attack "
            "(budget 0 is clean accuracy; an unbounded row is given in the legend), and defense × attack "
            "heatmaps at each norm's median budget.</p>\n" + items)


def _notes_html(site: Site) -> str:
    """The leaderboard footnotes: failures, detector false-positive rates, sanity flags."""
    flag = " class=\"flag\""
    items = "".join(f"<li{flag if n.startswith('sanity:') else ''}>{escape(n)}</li>\n"
                    for n in site.board.notes) or "<li>No failures, detectors or sanity flags.</li>\n"
    return f"<h2 id=\"notes\">Notes and sanity flags</h2>\n<ul class=\"notes\">\n{items}</ul>\n"


def _reproduce_html(site: Site) -> str:
    """The exact commands, and the tournament file as recorded when the run started."""
    run, name = site.run, site.toml_name
    db = f"results/{Path(name).stem}.db"
    head = "<h2 id=\"reproduce\">Reproduce</h2>\n"
    if run.source_text is None:
        return (head + "<p>This run was started without a tournament file; its validated configuration "
                "(configuration hash <code>" + escape(run.config_hash) + "</code>) was:</p>\n"
                + json_pre(run.config))
    digest = hashlib.sha256(run.source_text.encode()).hexdigest()
    commands = f"arena run {name}\narena publish {db} site/"
    return (head + f"<p>Download <a href=\"{link(name)}\" download=\"{escape(name)}\">{escape(name)}</a> "
            f"(recorded from <code>{escape(str(run.source))}</code>; sha256 <code>{digest}</code>; "
            f"configuration hash <code>{escape(run.config_hash)}</code>) and run, with the package "
            "versions listed under provenance:</p>\n"
            f"<pre id=\"command\">{escape(commands)}</pre>\n<p>The tournament file:</p>\n"
            f"<pre id=\"tournament-file\">{escape(run.source_text)}</pre>\n")


def _provenance_html(site: Site) -> str:
    """Where and with what the run was produced."""
    prov, run = dict(site.provenance), site.run
    packages = prov.pop("packages", {})
    prov.pop("config_hash", None)  # shown from the run row
    pairs = [("run", escape(f"{run.id} ({run.status})")), ("seed", escape(str(run.seed))),
             ("configuration hash", f"<code>{escape(run.config_hash)}</code>"),
             ("tournament file", escape(str(run.source or "–"))),
             ("started", when(run.started)), ("finished", when(run.finished))]
    pairs += [(k, escape(str(v))) for k, v in sorted(prov.items())]
    pairs += [(f"package {k}", f"<code>{escape(str(v))}</code>") for k, v in sorted(packages.items())]
    return facts(pairs)


# --- detail pages ------------------------------------------------------------------------------

def _match_body(site: Site, m: MatchRecord) -> str:
    """A match's status, metrics, error, attack configuration and provenance."""
    mask = m.robust_mask or ()
    budget = budget_label(m.budget)
    page = site.defense_href(m.defense)
    defense = f"<a href=\"../{link(page)}\">{escape(m.defense)}</a>" if page else escape(m.defense)
    pairs = [("defense", defense),
             ("attack", escape(m.attack)), ("attack plugin", f"<code>{escape(m.attack_id)}</code>"),
             ("norm", escape(m.norm)), ("threat model", escape(m.threat_model)),
             ("budget ε", escape(budget)),
             ("status", f"<strong>{escape(m.status)}</strong>"),
             ("robust accuracy", fmt(m.robust_accuracy, "pct") + _interval_html(stats.of_mask(mask) if m.ok else None)),
             ("worst case at this ε", _worst_html(site, m)),
             ("robust samples", f"{sum(mask)} of {len(mask)}" if mask else "–"),
             ("attack success rate", fmt(m.success_rate, "pct")),
             ("mean distance", fmt(m.mean_distance)), ("mean queries", fmt(m.mean_queries)),
             ("wall time", fmt(m.wall_seconds, "s")), ("started", when(m.started)),
             ("finished", when(m.finished))]
    error = f"<h2>Error</h2>\n<pre class=\"error\">{escape(str(m.error))}</pre>\n" if m.error else ""
    return (f"<h1>{escape(m.attack)} vs {escape(m.defense)} at ε={escape(budget)}</h1>\n" + facts(pairs)
            + error + _components_html(m) + _metric_facts(site, m.defense, m.attack, m.budget)
            + "<h2>Attack configuration</h2>\n" + json_pre(m.attack_config)
            + "<h2>Match provenance</h2>\n" + json_pre(m.provenance)
            + "<h2>Run provenance</h2>\n" + _provenance_html(site)
            + "<p>To reproduce, see <a href=\"../index.html#reproduce\">the tournament file and command</a>.</p>\n")


def _components_html(m: MatchRecord) -> str:
    """An ensemble's cascade (its details' ``components``): per component the samples it
    attacked (those every earlier one left robust), broke, and its seconds."""
    comps = (m.provenance.get("details") or {}).get("components")
    if not isinstance(comps, list) or not comps or not all(isinstance(c, dict) for c in comps):
        return ""
    body = "".join(
        f"<tr><td class=\"name\">{escape(str(c.get('name', '?')))}</td><td>{escape(str(c.get('attacked', '–')))}</td>"
        f"<td>{escape(str(c.get('broken', '–')))}</td>"
        f"<td>{escape(str(_robust_after(c)))}</td><td>{fmt(c.get('seconds'), 's')}</td></tr>\n" for c in comps)
    return ("<h2>Components (cascade)</h2>\n<p>Each component attacks only the samples every earlier one left "
            "robust; a sample keeps the first example that fools the model.</p>\n<table>\n<thead><tr><th>component</th>"
            "<th>attacked</th><th>broken</th><th>robust after</th><th>time</th></tr></thead>\n<tbody>\n"
            + body + "</tbody>\n</table>\n")


def _robust_after(c: dict[str, Any]) -> Any:
    a, b = c.get("attacked"), c.get("broken")
    return a - b if isinstance(a, int) and isinstance(b, int) else "–"


def _interval_html(interval: stats.Interval | None) -> str:
    """`` (95 % Wilson interval 35.6–54.8 %, 100 samples)`` after a detail page's accuracy."""
    if interval is None:
        return ""
    return (f" <span class=\"muted\">(95 % Wilson interval {100 * interval.low:.1f}–{100 * interval.high:.1f} %, "
            f"{interval.samples} samples)</span>")


def _worst_html(site: Site, m: MatchRecord) -> str:
    """The worst case of the match's defense at its norm and budget, and whether it is complete."""
    value, mark = site.worst.get((m.defense, m.norm, budget_label(m.budget)), (None, None))
    shown = fmt(value, "pct")
    if mark is None:
        return shown + (" (complete: every attack it covers finished ok)" if value is not None else "")
    return (f"<strong class=\"incomplete\">{shown}{INCOMPLETE}</strong> {escape(str(mark))}; the number is taken over "
            "the attacks that finished ok only, an upper bound of the true worst case, and the defense is not "
            "ranked on it")


def _defense_body(site: Site, model: ModelRecord) -> str:
    """A defense's training configuration and the list of its matches."""
    d = model.defense
    pairs = [("plugin", f"<code>{escape(model.defense_id)}</code>"), ("kind", escape(model.defense_kind)),
             ("backend", escape(tables.backend(model))),
             ("clean accuracy", fmt(model.clean_accuracy, "pct") + _interval_html(stats.of_mask(model.clean_mask))),
             ("detector false-positive rate", fmt(model.false_positive_rate, "pct")),
             ("training time", fmt(model.train_seconds, "s")),
             ("model cache key", f"<code>{escape(str(model.cache_key or '–'))}</code>")]
    paper = next((e.get("paper") for e in site.run.config.get("defenses") or []
                  if isinstance(e, dict) and (e.get("name") or e.get("id")) == d and e.get("paper")), None)
    if paper:
        text = escape(str(paper))
        pairs.insert(0, ("paper", f'<a href="{text}" rel="noopener">{text}</a>'
                         if str(paper).startswith(("https://", "http://")) else text))
    rows = "".join(
        f"<tr><td class=\"name\"><a href=\"../{link(site.match_href(m))}\">{escape(m.attack)}</a></td>"
        f"<td>{escape(m.norm)}</td><td>{escape(budget_label(m.budget))}</td>"
        f"<td>{escape(m.status)}</td><td>{fmt(m.robust_accuracy, 'pct')}</td>"
        f"<td>{fmt(m.mean_queries)}</td><td>{fmt(m.wall_seconds, 's')}</td></tr>\n"
        for m in site.matches if m.defense == d)
    head = "".join(f"<th scope=\"col\">{h}</th>" for h in
                   ("attack", "norm", "ε", "status", "robust accuracy", "mean queries", "wall time"))
    return (f"<h1>{escape(d)}</h1>\n" + facts(pairs) + _metric_facts(site, d) + "<h2>Configuration</h2>\n"
            + json_pre(model.config) + "<h2>Model provenance</h2>\n"
            + json_pre(model.provenance) + "<h2>Model probes (sanity checks)</h2>\n"
            + json_pre(model.checks) + "<h2>Matches</h2>\n<div class=\"scroll\">\n"
            f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n</div>\n")
