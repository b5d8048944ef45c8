"""The leaderboard's numbers and texts, from small stores built by hand: an incomplete worst case is
never shown as complete, a failed attack keeps its row, and every name is escaped for its format."""
from __future__ import annotations

import csv
import io
import json
import math
import re

import pytest

import arena
from arena.leaderboard import tables
from arena.tournament.store import MatchRow, Store

KNOWLEDGE = {"fgsm": "white-box", "pgd-linf": "white-box", "deepfool": "white-box", "hsj": "black-box"}


def build_store(path, rows, *, defenses=("d", "e"), attacks=None, name="t", clean="1111", seed=42,
                status="finished"):
    """A run with ``defenses`` (all built, clean mask ``clean``) and ``rows`` of
    (defense, attack, budget, status, robust mask); ``attacks`` are the file's attack entries."""
    store = Store(path)
    config = {"dataset": {"id": "digits"}, **({"attacks": attacks} if attacks is not None else {})}
    run = store.start_run(name, "h", config, None, None, seed, 0.0, {})
    for d in defenses:
        store.save_model(run, defense=d, defense_id="standard", defense_kind="training-time", config={},
                         clean_accuracy=clean.count("1") / len(clean), clean_mask=clean, false_positive_rate=None,
                         cache_key=None, train_seconds=0.0, checks={})
    for defense, attack, budget, state, mask in rows:
        ok = state == "ok"
        store.save_match(run, MatchRow(
            defense=defense, attack=attack, budget=budget, attack_id=attack.split("-")[0], attack_config={},
            norm="linf", knowledge=KNOWLEDGE.get(attack, "white-box"), status=state,
            robust_accuracy=mask.count("1") / len(mask) if ok else None,
            success_rate=1 - mask.count("1") / len(mask) if ok else None,
            robust_mask=mask if ok else None, mean_queries=10.0 if ok else None, wall_seconds=1.0,
            error=None if ok else f"{state}: pgd ran out of time"))
    store.finish_run(run, 1.0, status)
    return store


# d: FGSM ok (50 %), PGD timed out, so its worst case 50.0 is only an upper bound.
# e: both ok, worst case 25.0: complete, and ranked first although d's (incomplete) number is higher.
TIMED_OUT = [("d", "fgsm", 0.1, "ok", "1100"), ("d", "pgd-linf", 0.1, "timed-out", ""),
             ("e", "fgsm", 0.1, "ok", "1110"), ("e", "pgd-linf", 0.1, "ok", "1000")]


@pytest.fixture
def timed_out(tmp_path):
    return build_store(tmp_path / "t.db", TIMED_OUT)


def _section(board, norm="linf"):
    return next(s for s in board.sections if s.norm == norm)


def _cell(section, defense, header):
    row = next(r for r in section.rows if r[0] == defense)
    return row[section.headers.index(header)]


@pytest.mark.parametrize("fmt, marked", [("table", "50.0*"), ("markdown", r"50.0\*"), ("latex", "50.0*"),
                                         ("html", "50.0*")])
def test_an_incomplete_worst_case_is_marked_in_every_text_format(timed_out, fmt, marked):
    text = tables.build(timed_out).render(fmt)
    assert marked in text
    assert "d, worst ε=0.1: incomplete: pgd-linf timed-out" in text.replace(r"$\varepsilon$", "ε")
    assert "25.0*" not in text and r"25.0\*" not in text  # e's worst case is complete


def test_an_incomplete_worst_case_says_so_in_json_and_csv(timed_out):
    board = tables.build(timed_out)
    data = json.loads(board.render("json"))
    worst = {(w["defense"], w["budget"]): w for w in data["worst_cases"]}
    assert worst[("d", 0.1)]["complete"] is False and worst[("d", 0.1)]["robust_accuracy"] == 0.5
    assert worst[("d", 0.1)]["missing"] == [{"attack": "pgd-linf", "status": "timed-out"}]
    assert worst[("e", 0.1)]["complete"] is True and worst[("e", 0.1)]["missing"] == []
    table = next(t for t in data["tables"] if t["norm"] == "linf")
    assert table["ranked"] == 1 and table["incomplete"] == [
        {"row": 1, "name": "d", "column": "worst ε=0.1", "missing": [{"attack": "pgd-linf", "status": "timed-out"}]}]
    rows = list(csv.DictReader(io.StringIO(board.render("csv"))))
    worst_rows = {r["defense"]: r for r in rows if r["kind"] == "worst-case"}
    assert worst_rows["d"]["complete"] == "false" and worst_rows["d"]["missing"] == "pgd-linf: timed-out"
    assert worst_rows["d"]["robust_accuracy"] == "0.5" and worst_rows["e"]["complete"] == "true"
    assert {r["attack"] for r in rows if r["kind"] == "match"} == {"fgsm", "pgd-linf"}


def test_incomplete_rows_are_listed_after_the_ranked_ones(timed_out):
    section = _section(tables.build(timed_out))
    assert [r[0] for r in section.rows] == ["e", "d"] and section.ranked == 1
    assert _cell(section, "d", "worst ε=0.1") == 0.5 and _cell(section, "d", "pgd-linf ε=0.1") == "timed-out"


def test_a_failed_attack_keeps_its_row_in_the_attack_table(timed_out):
    attacks = next(s for s in tables.build(timed_out).sections if s.norm.startswith("attacks"))
    row = next(r for r in attacks.rows if r[0] == "pgd-linf")
    cells = dict(zip(attacks.headers, row))
    assert cells["vs d"] == "timed-out" and cells["vs e"] == 0.75
    assert cells["score"] == 0.75  # over the defenses it finished against, not 0 for the timed-out one
    assert attacks.ranked == 1 and attacks.rows[-1][0] == "pgd-linf"
    assert any(str(m) == "pgd-linf ε=0.1, score: incomplete: vs d timed-out" for m in attacks.marks.values())


def test_an_attack_that_failed_everywhere_scores_nothing_rather_than_zero(tmp_path):
    rows = [("d", "fgsm", 0.1, "ok", "1100"), ("d", "pgd-linf", 0.1, "failed", "")]
    board = tables.build(build_store(tmp_path / "f.db", rows, defenses=("d",)))
    attacks = next(s for s in board.sections if s.norm.startswith("attacks"))
    cells = dict(zip(attacks.headers, next(r for r in attacks.rows if r[0] == "pgd-linf")))
    assert cells["score"] is None and cells["vs d"] == "failed"
    assert "pgd-linf" in board.render("table").split("attacks (success rate in %)")[1]


def test_a_match_missing_for_a_defense_the_attack_faces_makes_it_incomplete(tmp_path):
    """An interrupted run: pgd never ran against d. cw (``against = ["e"]``) does not face d, so its
    absence there leaves d's worst case complete at 0.3."""
    attacks = [{"id": "fgsm", "name": None, "budgets": [0.1, 0.3], "against": None},
               {"id": "pgd", "name": "pgd-linf", "budgets": [0.1], "against": None},
               {"id": "cw", "name": None, "budgets": [0.3], "against": ["e"]}]
    rows = [("d", "fgsm", 0.1, "ok", "1100"), ("d", "fgsm", 0.3, "ok", "1000"),
            ("e", "fgsm", 0.1, "ok", "1110"), ("e", "fgsm", 0.3, "ok", "1100"),
            ("e", "pgd-linf", 0.1, "ok", "1000"), ("e", "cw", 0.3, "ok", "0000")]
    board = tables.build(build_store(tmp_path / "m.db", rows, attacks=attacks, status="running"))
    section = _section(board)
    assert [str(m) for m in section.marks.values()] == ["d, worst ε=0.1: incomplete: pgd-linf missing"]
    text = board.render("table")
    assert "run 1 is not finished (status running)" in text


def test_a_minimal_attack_serves_only_the_budgets_it_lists(tmp_path):
    """deepfool (minimal; budgets [0.1] and ∞) failed: the worst cases at 0.1 and ∞ are incomplete,
    the one at 0.3, where only fgsm was asked to run, is complete."""
    rows = [("d", "fgsm", 0.1, "ok", "1100"), ("d", "fgsm", 0.3, "ok", "1000"),
            ("d", "deepfool", 0.1, "failed", ""), ("d", "deepfool", math.inf, "failed", "")]
    section = _section(tables.build(build_store(tmp_path / "n.db", rows, defenses=("d",))))
    marked = {section.headers[j] for (_, j) in section.marks}
    assert marked == {"worst ε=0.1", "worst ε=∞"}
    assert _cell(section, "d", "worst ε=∞") is None  # nothing finished there: no number at all


def test_a_defense_that_could_not_be_built_keeps_its_row(tmp_path):
    store = build_store(tmp_path / "b.db", [("d", "fgsm", 0.1, "ok", "1100")], defenses=("d",))
    store.save_match(1, MatchRow(defense="broken", attack="fgsm", budget=0.1, attack_id="fgsm", attack_config={},
                                 norm="linf", knowledge="white-box", status="failed",
                                 error="defense 'broken' could not be built: ValueError: no"))
    section = _section(tables.build(store))
    assert [r[0] for r in section.rows] == ["d", "broken"] and section.ranked == 1
    assert _cell(section, "broken", "clean") == "failed" and _cell(section, "broken", "fgsm ε=0.1") == "failed"


def test_filters_keep_the_marking(timed_out):
    board = tables.build(timed_out, budget=0.1, knowledge="white-box")
    assert "50.0*" in board.render("table")
    hsj = [(d, "hsj", 0.1, "ok", "0000") for d in ("d", "e")]
    black = build_store(timed_out.path.with_name("k.db"), TIMED_OUT + hsj)
    only = tables.build(black, knowledge="black-box")  # the white-box failure is not hsj's worst case
    assert not _section(only).marks


# --- escaping ------------------------------------------------------------------------------------

HOSTILE = "<script>alert(1)</script> | *bold* _x_ \\ & % $ # { } ~ ^"


@pytest.fixture
def hostile(tmp_path):
    rows = [(HOSTILE, "fgsm", 0.1, "ok", "1100"), (HOSTILE, "pgd-linf", 0.1, "failed", ""),
            ("e", "fgsm", 0.1, "ok", "1110"), ("e", "pgd-linf", 0.1, "ok", "1000")]
    store = build_store(tmp_path / "h.db", rows, defenses=(HOSTILE, "e"), name=f"run {HOSTILE}")
    store.conn.execute("UPDATE matches SET error = ? WHERE status = 'failed'", ("ValueError: <img src=x> | `",))
    store.conn.commit()
    return store


def test_html_escapes_the_name_labels_and_notes(hostile):
    text = tables.build(hostile).render("html")
    assert "<script>" not in text and "<img" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "ValueError: &lt;img src=x&gt;" in text


def test_markdown_escapes_table_cells_and_notes(hostile):
    text = tables.build(hostile).render("markdown")
    body = "\n".join(re.sub(r"(?<!\\)\|", "", line) if line.startswith("|") else line for line in text.splitlines())
    assert not re.search(r"(?<!\\)[<*_|`$]", body), body  # no markup, HTML or math but the tables' own
    linf = text.split("## L∞")[1].split("## attacks (success rate in %)")[0]  # a heading per table
    widths = {len(re.findall(r"(?<!\\)\|", line)) for line in linf.splitlines() if line.startswith("|")}
    assert widths == {6}, linf  # 5 columns (defense, clean, fgsm, pgd-linf, worst): a name's | is no border
    assert r"\<script\>" in text and r"\|" in text and r"\*bold\*" in text and r"\_x\_" in text
    assert "ValueError: \\<img src=x\\> \\| \\`" in text


def test_latex_escapes_every_special_character(hostile):
    text = tables.build(hostile).render("latex")
    assert r"\textless{}script\textgreater{}" in text and r"\textbar{}" in text and r"\{ \}" in text
    assert r"\textbackslash{} \& \% \$ \#" in text and r"\textasciitilde{} \textasciicircum{}" in text
    rest = re.sub(r"\\(textbackslash|textasciitilde|textasciicircum|textless|textgreater|textbar)\{\}", "", text)
    rest = re.sub(r"\\[&%$#_{}]", "", rest)
    structure = (r"^%.*$|\\(begin|end)\{(table|tabular|itemize)\}(\{[lr]+\}|\[htbp\])?|\\(top|mid|bottom)rule|"
                 r"\\item|\\(centering|footnotesize|par)|\\(caption|label)\{|\}$|"
                 r"\$\\(varepsilon|infty)\$| & | \\\\$")  # a table float: booktabs, caption, label
    rest = re.sub(structure, "", rest, flags=re.MULTILINE)
    assert not re.search(r"[\\&%$#_{}~^]", rest), rest


def test_plain_text_shows_control_characters_instead_of_sending_them(tmp_path):
    store = build_store(tmp_path / "c.db", [("d\x1b[2J\nx", "fgsm", 0.1, "ok", "1100")], defenses=("d\x1b[2J\nx",))
    text = tables.build(store).render("table")
    assert "\x1b" not in text and "d\\x1b[2J x" in text


def test_csv_cells_never_start_a_formula(tmp_path):
    name = "=HYPERLINK(\"http://x\",\"y\")"
    store = build_store(tmp_path / "s.db", [(name, "@fgsm", 0.1, "ok", "1100")], defenses=(name,))
    rows = list(csv.DictReader(io.StringIO(tables.build(store).render("csv"))))
    assert rows and all(r["defense"] == "'" + name for r in rows) and rows[0]["attack"] == "'@fgsm"
    assert json.loads(tables.build(store).render("json"))["results"][0]["defense"] == name  # json stays exact


def test_an_unknown_format_is_a_config_error(timed_out):
    with pytest.raises(arena.ConfigError, match="unknown format 'xml'"):
        tables.build(timed_out).render("xml")


# --- the published site ------------------------------------------------------------------------

def _publish(store, out):
    pytest.importorskip("matplotlib", reason="publish needs matplotlib")
    from arena.leaderboard import site

    return site.publish(store, None, out)


def _pages(index):
    return [index, *sorted((index.parent / "matches").glob("*.html")),
            *sorted((index.parent / "defenses").glob("*.html"))]


def _check_page(page):
    import xml.etree.ElementTree as ET

    text = page.read_text(encoding="utf-8")
    ET.fromstring(text.split("\n", 1)[1])  # well-formed: no markup slipped in through a name
    assert "<script>" not in text and "<img src=x" not in text and "<b>" not in text, page
    for ref in re.findall(r'(?:src|href)="([^"#]+)', text):
        assert (page.parent / ref).resolve().is_file(), (page, ref)
    return text


def test_the_site_marks_an_incomplete_worst_case_and_keeps_the_failed_attack(timed_out, tmp_path):
    index = _publish(timed_out, tmp_path / "site")
    text = index.read_text(encoding="utf-8")
    cell = re.search(r'<td class="worst incomplete[^"]*" data-value="0.5" title="([^"]*)">(.*?)</td>', text)
    assert cell and cell.group(1) == "d, worst ε=0.1: incomplete: pgd-linf timed-out" and "50.0*" in cell.group(2)
    assert "* d, worst ε=0.1: incomplete: pgd-linf timed-out" in text  # the explanation on the page
    assert 'title="not ranked: incomplete"' in text
    attacks = text.split('id="table-attacks-success-rate-in"')[1].split("</table>")[0]
    assert "pgd-linf" in attacks and "timed-out" in attacks
    for name in ("d--fgsm--0.1.html", "d--pgd-linf--0.1.html"):
        page = (index.parent / "matches" / name).read_text(encoding="utf-8")
        assert "worst case at this ε" in page and "incomplete: pgd-linf timed-out" in page, name
    page = (index.parent / "matches" / "e--fgsm--0.1.html").read_text(encoding="utf-8")
    assert "worst case at this ε" in page and "incomplete" not in page
    for page in _pages(index):
        _check_page(page)


def test_the_site_escapes_every_field(tmp_path):
    attack = '"><img src=x onerror=alert(1)>'
    rows = [(HOSTILE, "fgsm", 0.1, "ok", "1100"), (HOSTILE, attack, 0.1, "failed", ""),
            ("e", "fgsm", 0.1, "ok", "1110"), ("e", attack, 0.1, "ok", "1000")]
    store = build_store(tmp_path / "x.db", rows, defenses=(HOSTILE, "e"), name=HOSTILE, seed="<b>7</b>")
    store.conn.execute("UPDATE matches SET error = '<script>x</script>', robust_accuracy = '<b>1</b>'"
                       " WHERE status = 'failed'")
    store.conn.commit()
    index = _publish(store, tmp_path / "site")
    for page in _pages(index):
        _check_page(page)
    text = index.read_text(encoding="utf-8")
    assert "seed &lt;b&gt;7&lt;/b&gt;" in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_long_names_give_bounded_unique_file_names(tmp_path):
    long_a, long_b = "d" * 299 + "a", "d" * 299 + "b"
    attack = "attack " * 43
    rows = [(d, a, 0.1, "ok", "1100") for d in (long_a, long_b) for a in ("fgsm", attack)]
    store = build_store(tmp_path / "l.db", rows, defenses=(long_a, long_b), name="n" * 300)
    index = _publish(store, tmp_path / "site")
    out = index.parent
    names = [p.name for p in out.rglob("*")]
    assert max(len(n) for n in names) <= 200
    assert len(list((out / "matches").glob("*.html"))) == 4 and len(list((out / "defenses").glob("*.html"))) == 2
    for page in _pages(index):
        _check_page(page)


def test_slugs_are_bounded_and_keep_apart_names_that_differ_after_the_cut():
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    from arena.leaderboard import plots

    long_a, long_b = "x" * 200 + "a", "x" * 200 + "b"
    slugs = plots.unique_slugs([long_a, long_b, "PGD L2", "pgd-l2"])
    assert slugs[long_a] != slugs[long_b] and all(len(s) <= 90 for s in slugs.values())
    assert slugs["PGD L2"] == "pgd-l2" and slugs["pgd-l2"] == "pgd-l2-2"
    assert plots.unique_slugs([long_a])[long_a] == slugs[long_a]  # stable from one publish to the next


def test_publishing_where_nothing_can_be_written_is_a_one_line_error(timed_out, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(arena.ConfigError, match=re.escape(str(blocker / "site"))) as info:
        _publish(timed_out, blocker / "site")
    assert "\n" not in str(info.value)


def test_publishing_into_a_folder_no_one_may_create_is_a_one_line_error(timed_out):
    from pathlib import Path

    where = Path("/sys/arena_site" if Path("/sys").is_dir() else "/proc/arena_site")  # root included
    with pytest.raises(arena.ConfigError, match=rf"^{re.escape(str(where))}: cannot write the site there: "):
        _publish(timed_out, where)


def test_publishing_into_a_read_only_folder_is_a_one_line_error(timed_out, tmp_path, monkeypatch):
    from pathlib import Path

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)  # as a read-only folder does (root ignores chmod)
    with pytest.raises(arena.ConfigError, match=rf"{re.escape(str(tmp_path / 'ro'))}.*Permission denied"):
        _publish(timed_out, tmp_path / "ro")


def test_cli_publish_into_an_unwritable_folder_exits_2(timed_out, tmp_path):
    pytest.importorskip("matplotlib", reason="publish needs matplotlib")
    from click.testing import CliRunner

    from arena.cli import cli

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = CliRunner().invoke(cli, ["publish", str(timed_out.path), str(blocker / "site")])
    assert result.exit_code == 2 and "Traceback" not in result.output and str(blocker) in result.output


def test_a_defense_that_could_not_be_built_is_published(tmp_path):
    store = build_store(tmp_path / "b.db", [("d", "fgsm", 0.1, "ok", "1100")], defenses=("d",))
    store.save_match(1, MatchRow(defense="broken", attack="fgsm", budget=0.1, attack_id="fgsm", attack_config={},
                                 norm="linf", knowledge="white-box", status="failed", error="could not be built"))
    index = _publish(store, tmp_path / "site")
    assert (index.parent / "matches" / "broken--fgsm--0.1.html").is_file()
    for page in _pages(index):
        _check_page(page)


def test_the_heatmap_marks_an_incomplete_worst_case(timed_out):
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    from arena.leaderboard import plots

    run = timed_out.run(1)
    _, _, texts = plots._heatmap_grid(run, timed_out.models(1), timed_out.matches(1), "linf", 0.1)
    assert texts == [["50.0", "timed-out", "50.0*"], ["75.0", "25.0", "25.0"]]
