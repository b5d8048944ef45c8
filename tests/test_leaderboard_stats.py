"""The leaderboard's statistics and documents: every accuracy with its sample count and 95 % Wilson
interval (text, JSON, CSV, site), ranking by the mean worst case or by a primary budget per norm
(``rank_by``, whose absence leaves the configuration hash as it was), and complete LaTeX, Markdown
and HTML documents. Stores are built by hand, as in test_leaderboard.py."""
from __future__ import annotations

import csv
import io
import json
import math
import re
import tomllib
from html.parser import HTMLParser

import pytest

import arena
from arena.leaderboard import stats, tables
from arena.tournament.config import read_tournament
from arena.tournament.store import MatchRow, Store


def make_store(path, rows, *, clean=None, config=None, checks=None, provenance=None):
    """A finished run: ``clean`` maps each defense to its clean mask ("1101"), ``rows`` are
    (defense, attack, budget, status, robust mask[, norm]) and ``config`` is stored as the run's."""
    clean = clean or {"d": "1111", "e": "1111"}
    store = Store(path)
    run = store.start_run("stats", "h", {"dataset": {"id": "digits"}, **(config or {})}, None, None, 1, 0.0, {})
    for d, mask in clean.items():
        store.save_model(run, defense=d, defense_id="standard", defense_kind="training-time", config={},
                         clean_accuracy=mask.count("1") / len(mask), clean_mask=mask, false_positive_rate=None,
                         cache_key=None, train_seconds=0.0, checks=(checks or {}).get(d, {}))
    for defense, attack, budget, state, mask, *norm in rows:
        ok = state == "ok"
        store.save_match(run, MatchRow(
            defense=defense, attack=attack, budget=budget, attack_id="pgd", attack_config={},
            norm=norm[0] if norm else "linf", knowledge="white-box", status=state,
            robust_accuracy=mask.count("1") / len(mask) if ok else None,
            success_rate=1 - mask.count("1") / len(mask) if ok else None, robust_mask=mask if ok else None,
            mean_queries=10.0 if ok else None, wall_seconds=1.0, error=None if ok else "it failed",
            provenance=(provenance or {}).get(defense, {})))
    store.finish_run(run, 1.0, "finished")
    return store


def _section(board, norm="linf"):
    return next(s for s in board.sections if s.norm == norm)


def _header(section, name):
    return section.headers.index(name)


# --- the interval -------------------------------------------------------------------------------

def test_wilson_matches_known_values():
    iv = stats.wilson(45, 100)
    assert iv.samples == 100 and iv.successes == 45
    assert iv.low == pytest.approx(0.356145, abs=1e-6) and iv.high == pytest.approx(0.547554, abs=1e-6)
    assert (stats.wilson(0, 40).low, stats.wilson(40, 40).high) == (0.0, 1.0)
    assert stats.wilson(0, 40).high == pytest.approx(0.087622, abs=1e-6)  # 1.96² / (40 + 1.96²)
    assert stats.wilson(1, 4).low == pytest.approx(0.045587, abs=1e-6)
    assert stats.wilson(0, 0) is None and stats.wilson(5, 4) is None


def test_wilson_agrees_with_scipy():
    binomtest = pytest.importorskip("scipy.stats").binomtest
    for k, n in ((45, 100), (0, 40), (40, 40), (1, 4), (7, 9), (513, 1000)):
        ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
        iv = stats.wilson(k, n)
        assert iv.low == pytest.approx(ref.low, abs=1e-12) and iv.high == pytest.approx(ref.high, abs=1e-12), (k, n)


def test_a_share_without_a_mask_gets_an_interval_only_when_it_is_a_whole_count():
    assert stats.of_share(0.45, 100) == stats.wilson(45, 100)
    assert stats.of_share(0.4567, 100) is None and stats.of_share("x", 100) is None
    assert stats.of_mask((True, False, True, True)) == stats.wilson(3, 4) and stats.of_mask(()) is None


# --- intervals in every format ------------------------------------------------------------------

ROWS = [("d", "fgsm", 0.1, "ok", "1100"), ("d", "pgd", 0.1, "ok", "1000"),
        ("e", "fgsm", 0.1, "ok", "1110"), ("e", "pgd", 0.1, "failed", "")]


@pytest.fixture
def board(tmp_path):
    return tables.build(make_store(tmp_path / "s.db", ROWS))


def test_every_accuracy_cell_has_its_interval(board):
    s = _section(board)
    d = next(i for i, r in enumerate(s.rows) if r[0] == "d")
    assert s.intervals[(d, 1)] == stats.wilson(4, 4)  # clean
    assert s.intervals[(d, _header(s, "fgsm ε=0.1"))] == stats.wilson(2, 4)
    assert s.intervals[(d, _header(s, "worst ε=0.1"))] == stats.wilson(1, 4)  # 1100 & 1000
    e = next(i for i, r in enumerate(s.rows) if r[0] == "e")
    assert (e, _header(s, "pgd ε=0.1")) not in s.intervals  # a failed match has no number
    assert s.samples == 4 and not any(s.intervals for s in board.sections[1:])  # the attacks' scores: none


def test_the_text_table_shows_intervals_and_the_sample_count_once(board):
    text = board.render("table")
    low, high = stats.wilson(1, 4).low, stats.wilson(1, 4).high
    assert f"25.0 [{100 * low:.1f}–{100 * high:.1f}]" in text
    assert text.count("n = 4 samples") == 1 and " n=4" not in text
    assert "95 % Wilson interval" in text


def test_json_and_csv_carry_samples_and_bounds(board):
    data = json.loads(board.render("json"))
    assert data["confidence"] == {"level": 0.95, "method": "wilson"} and data["ranking"] == {"by": "mean"}
    fgsm = next(r for r in data["results"] if (r["defense"], r["attack"]) == ("d", "fgsm"))
    assert (fgsm["samples"], fgsm["ci_low"], fgsm["ci_high"]) == (4, stats.wilson(2, 4).low, stats.wilson(2, 4).high)
    assert (fgsm["clean_samples"], fgsm["clean_ci_high"]) == (4, 1.0)
    failed = next(r for r in data["results"] if r["status"] == "failed")
    assert failed["samples"] is None and failed["ci_low"] is None
    worst = next(w for w in data["worst_cases"] if w["defense"] == "d")
    assert (worst["samples"], worst["ci_low"]) == (4, stats.wilson(1, 4).low)
    table = data["tables"][0]
    assert table["samples"] == 4 and len(table["intervals"]) == len(table["rows"])
    assert table["intervals"][0][0] is None and table["intervals"][0][1]["samples"] == 4
    rows = list(csv.DictReader(io.StringIO(board.render("csv"))))
    assert {"samples", "ci_low", "ci_high", "clean_samples", "clean_ci_low", "clean_ci_high"} <= set(rows[0])
    by_kind = {(r["kind"], r["defense"], r["attack"]): r for r in rows}
    assert float(by_kind[("worst-case", "d", "worst case")]["ci_high"]) == pytest.approx(stats.wilson(1, 4).high)
    assert by_kind[("match", "d", "pgd")]["samples"] == "4" and by_kind[("match", "e", "pgd")]["samples"] == ""


def test_different_sample_counts_get_an_n_column(tmp_path):
    rows = [("d", "fgsm", 0.1, "ok", "1100"), ("e", "fgsm", 0.1, "ok", "1111100000")]
    board = tables.build(make_store(tmp_path / "n.db", rows, clean={"d": "1111", "e": "1111111111"}))
    assert _section(board).samples is None
    lines = board.render("table").splitlines()
    header = next(line for line in lines if line.startswith("defense"))
    assert header.split()[:2] == ["defense", "n"]
    starts = {tuple(line.split()[:2]) for line in lines}
    assert ("e", "10") in starts and ("d", "4") in starts


def test_a_randomised_defense_says_what_its_interval_counts(tmp_path):
    judged = {"judged": {"passes": 20, "rule": "majority", "mean_accuracy": 0.4}}
    board = tables.build(make_store(tmp_path / "r.db", ROWS, provenance={"d": judged}))
    note = next(n for n in board.notes if n.startswith("d: randomised"))
    assert "majority verdict" in note and "clean accuracy likewise" in note


# --- rank_by --------------------------------------------------------------------------------------

# a: strong at 0.1 (90 %), weak at 0.3 (10 %): mean 50 %.  b: 60 % at both: mean 60 %.
DISAGREE = [("a", "pgd", 0.1, "ok", "1111111110"), ("a", "pgd", 0.3, "ok", "1000000000"),
            ("b", "pgd", 0.1, "ok", "1111110000"), ("b", "pgd", 0.3, "ok", "1111110000"),
            ("a", "pgd-l2", 1.0, "ok", "1100000000", "l2"), ("b", "pgd-l2", 1.0, "ok", "1110000000", "l2")]
TEN = {"a": "1111111111", "b": "1111111111"}


def test_rank_by_a_primary_budget_changes_the_order(tmp_path):
    mean = tables.build(make_store(tmp_path / "m.db", DISAGREE, clean=TEN))
    assert [r[0] for r in _section(mean).rows] == ["b", "a"]
    assert mean.title.endswith("defenses ranked by mean worst case")
    primary = tables.build(make_store(tmp_path / "p.db", DISAGREE, clean=TEN, config={"rank_by": {"linf": 0.1}}))
    assert [r[0] for r in _section(primary).rows] == ["a", "b"]
    assert _section(primary).ranking == "worst case at ε=0.1"
    assert "ranked by worst case at linf ε=0.1, mean worst case in l2" in primary.title
    assert any("rank_by names no primary budget for l2" in n for n in primary.notes)
    data = json.loads(primary.render("json"))
    assert data["ranking"] == {"by": "budget", "budgets": {"linf": 0.1}, "norms": {"linf": 0.1, "l2": None}}
    assert {t["norm"]: t["ranking"] for t in data["tables"]}["linf"] == "worst case at ε=0.1"
    assert "ranked by worst case at ε=0.1" in primary.render("markdown")


def test_a_primary_budget_without_results_falls_back_to_the_mean_with_a_note(tmp_path):
    board = tables.build(make_store(tmp_path / "f.db", DISAGREE, clean=TEN,
                                    config={"rank_by": {"linf": 0.2, "l1": 5}}))
    assert [r[0] for r in _section(board).rows] == ["b", "a"]
    assert any("no linf attack has a result at its primary budget ε=0.2 (budgets: 0.1, 0.3)" in n
               for n in board.notes)
    assert any("rank_by: l1 = 5 names a norm with no result" in n for n in board.notes)
    odd = tables.build(make_store(tmp_path / "o.db", DISAGREE, clean=TEN, config={"rank_by": "median"}))
    assert [r[0] for r in _section(odd).rows] == ["b", "a"] and any("unreadable" in n for n in odd.notes)


def test_only_an_incomplete_primary_worst_case_unranks_a_row(tmp_path):
    attacks = [{"id": "pgd", "name": "pgd", "budgets": [0.1, 0.3]}, {"id": "cw", "name": "cw", "budgets": [0.3]}]
    rows = [*DISAGREE[:4], ("a", "cw", 0.3, "timed-out", ""), ("b", "cw", 0.3, "ok", "1111110000")]
    config = {"attacks": attacks, "rank_by": {"linf": 0.1}}
    s = _section(tables.build(make_store(tmp_path / "i.db", rows, clean=TEN, config=config)))
    assert [r[0] for r in s.rows] == ["a", "b"] and s.ranked == 2  # a's gap is at 0.3, not at its rank budget
    assert [str(m) for m in s.marks.values()] == ["a, worst ε=0.3: incomplete: cw timed-out"]
    config["rank_by"] = {"linf": 0.3}
    s = _section(tables.build(make_store(tmp_path / "j.db", rows, clean=TEN, config=config)))
    assert [r[0] for r in s.rows] == ["b", "a"] and s.ranked == 1


BASE = {"name": "stats", "dataset": "digits", "architecture": "mlp", "defenses": [{"id": "standard"}],
        "attacks": [{"id": "pgd", "params": {"norm": "linf"}, "budgets": [0.1, 0.3]}, {"id": "fgsm", "budgets": [0.2]}]}


def test_the_digest_is_unchanged_without_rank_by():
    # the digest of BASE before rank_by existed (computed with the previous config.py)
    assert read_tournament(BASE, "t.toml").digest() == "57cc98d2796d8f7a"
    assert read_tournament({**BASE, "rank_by": "mean"}, "t.toml").digest() == "57cc98d2796d8f7a"
    assert read_tournament({**BASE, "rank_by": {"linf": 0.1}}, "t.toml").digest() != "57cc98d2796d8f7a"


def test_rank_by_is_read_from_toml_and_kept_in_the_stored_config():
    data = tomllib.loads('rank_by = { linf = 0.1, l2 = 0.2 }')
    cfg = read_tournament({**BASE, **data}, "t.toml")
    assert cfg.rank_by == {"linf": 0.1, "l2": 0.2} == cfg.model_dump(mode="json")["rank_by"]
    assert read_tournament(BASE, "t.toml").model_dump(mode="json")["rank_by"] == "mean"


@pytest.mark.parametrize("value, message", [
    ('"median"', 'rank_by: expected "mean" or one primary budget per norm (rank_by = { linf = 0.1 }), got "median"'),
    ("{}", "rank_by: expected \"mean\" or one primary budget per norm (rank_by = { linf = 0.1 }), got an empty table"),
    ("{ Linf = 0.1 }", "rank_by: Linf: unknown norm (did you mean 'linf'?)"),
    ("{ linf = 0 }", "rank_by: linf: expected a budget (a number above 0, not inf), got 0"),
    ('{ linf = "0.1" }', 'rank_by: linf: expected a budget (a number above 0, not inf), got "0.1"'),
    ("{ linf = 0.15 }", "rank_by: linf: no attack lists the budget 0.15 (budgets listed: 0.1, 0.2, 0.3)"),
    ("{ l2 = 0.1 }", "rank_by: l2: no l2 attack lists the budget 0.1 (it is listed by pgd (linf))"),
])
def test_a_bad_rank_by_is_a_one_line_error_naming_the_field(value, message):
    with pytest.raises(arena.ConfigError) as info:
        read_tournament({**BASE, **tomllib.loads(f"rank_by = {value}")}, "t.toml")
    assert str(info.value).startswith("t.toml: " + message) and "\n" not in str(info.value)


def test_a_budget_of_an_attack_whose_norm_only_its_plugin_knows_is_accepted():
    assert read_tournament({**BASE, "rank_by": {"l2": 0.2}}, "t.toml").rank_by == {"l2": 0.2}  # fgsm: no norm given


# --- complete documents ---------------------------------------------------------------------------

HOSTILE = "a_b&c%"


@pytest.fixture
def hostile(tmp_path):
    rows = [(HOSTILE, "fgsm", 0.1, "ok", "1100"), (HOSTILE, "pgd", 0.1, "timed-out", ""),
            ("[x] ~^\\{}$#", "fgsm", 0.1, "ok", "1110"), ("[x] ~^\\{}$#", "pgd", 0.1, "ok", "1000"),
            (HOSTILE, "pgd-l2", 1.0, "ok", "1000", "l2"), ("[x] ~^\\{}$#", "pgd-l2", 1.0, "ok", "0000", "l2")]
    return tables.build(make_store(tmp_path / "h.db", rows, clean={HOSTILE: "1111", "[x] ~^\\{}$#": "1111"}))


def _unescaped(text, char):
    return len(re.findall(r"(?<!\\)" + re.escape(char), text))


def test_latex_is_a_complete_booktabs_fragment(hostile):
    text = hostile.render("latex")
    n = len(hostile.sections)
    assert "\\usepackage{booktabs}" in text.split("\n", 2)[1] and text.startswith("%")
    body = "\n".join(line for line in text.splitlines() if not line.startswith("%"))
    for cmd in ("\\begin{table}", "\\end{table}", "\\toprule", "\\midrule", "\\bottomrule", "\\caption{",
                "\\begin{tabular}", "\\end{tabular}"):
        assert body.count(cmd) == n, cmd
    labels = re.findall(r"\\label\{([^}]*)\}", text)
    assert len(labels) == n == len(set(labels)) and all(re.fullmatch(r"tab:[a-z0-9-]+", label) for label in labels)
    assert r"a\_b\&c\%" in text and HOSTILE not in text
    assert r"{}[x] \textasciitilde{}\textasciicircum{}\textbackslash{}\{\}\$\#" in text  # [ cannot become \\[...]
    plain = re.sub(r"\\[\\{}$&%#_]", "", body)  # escaped characters are no structure
    assert plain.count("{") == plain.count("}")
    depth = 0
    for c in plain:
        depth += {"{": 1, "}": -1}.get(c, 0)
        assert depth >= 0
    assert _unescaped(body, "$") % 2 == 0
    assert not re.search(r"(?<!\\)&(?![^\n]*\\\\$)", body, re.MULTILINE)  # an unescaped & only in a tabular row
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", body):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env
    assert not stack
    assert "L$\\infty$" in text and "L2" in text


class _Tags(HTMLParser):
    VOID = {"meta", "br", "link", "img"}

    def __init__(self):
        super().__init__()
        self.stack, self.seen, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        self.seen.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_html_is_a_whole_page_with_a_table_per_section(hostile):
    text = hostile.render("html")
    assert text.startswith("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">")
    head = text.split("<head>")[1].split("</head>")[0]
    assert "<title>" in head and "a_b&amp;c%" not in head  # the title is the run's, escaped
    tags = _Tags()
    tags.feed(text)
    assert not tags.errors and not tags.stack, (tags.errors, tags.stack)
    assert tags.seen.count("table") == len(hostile.sections) == tags.seen.count("h2") - 1  # + the notes
    assert "a_b&amp;c%" in text and HOSTILE not in text
    assert text.rstrip().endswith("</html>")


def test_markdown_has_a_heading_per_norm_and_table(hostile):
    text = hostile.render("markdown")
    headings = re.findall(r"^(#+) (.*)$", text, re.MULTILINE)
    assert headings[0][0] == "#" and headings[0][1].startswith("stats on digits")
    assert [h for level, h in headings if level == "##"] == ["L2", "L∞", "attacks (success rate in %)", "Notes"]
    assert r"a\_b\&c%" in text and "n = 4 samples, 95 % Wilson interval in brackets" in text


# --- the site --------------------------------------------------------------------------------------

def test_the_site_marks_a_flagged_defense_and_shows_intervals(tmp_path):
    pytest.importorskip("matplotlib", reason="publish needs matplotlib")
    from arena.leaderboard import site

    store = make_store(tmp_path / "g.db", ROWS, checks={"e": {"outputs_probabilities": True}})
    index = site.publish(store, None, tmp_path / "site")
    text = index.read_text(encoding="utf-8")
    table = text.split('id="table-linf"')[1].split("</table>")[0]
    row = next(r for r in table.split("<tr") if 'href="defenses/e.html">e<' in r)
    assert row.startswith(' class="flagged"') and '<span class="flag"' in row
    assert re.search(r'<span class="flag"[^>]*title="sanity: the model outputs probabilities rather than logits', row)
    assert 'id="flags-linf"' in text and "a sanity check flagged this defense" in text
    other = next(r for r in table.split("<tr") if 'href="defenses/d.html">d<' in r)
    assert "flag" not in other
    low, high = stats.wilson(1, 4).low, stats.wilson(1, 4).high
    assert f'data-ci="{100 * low:.1f}–{100 * high:.1f}"' in table and "(1 of 4 samples)" in table
    headers = re.findall(r'<th scope="col"[^>]*><button type="button">(.*?)</button>', table)
    plain_headers = [re.sub(r"<[^>]+>", "", h) for h in headers]
    assert plain_headers[:4] == ["#", "defense", "clean", "worst ε=0.1"]  # the ranking columns first
    assert "n = 4 samples" in table
    assert math.isclose(json.loads((index.parent / "results.json").read_text())["results"][0]["ci_low"],
                        stats.wilson(2, 4).low)
