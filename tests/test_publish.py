"""Plots and the published static site, checked on files and in a real headless Chromium."""
from __future__ import annotations

import re
import shutil
import types
import xml.etree.ElementTree as ET
from typing import ClassVar

import pytest

import arena
from arena.attack import FixedBudgetAttack
from arena.tournament.plan import load_tournament
from arena.tournament.runner import Runner
from arena.tournament.store import Store

pytest.importorskip("matplotlib", reason="plots and publish need matplotlib")
from arena.leaderboard import plots, site  # noqa: E402

ODD = 'gda <b>&"σ $x_1$'  # a defense name that must be escaped everywhere
TOURNAMENT = f"""
name = "publish-test"
dataset = {{ id = "digits", params = {{ train_size = 500 }} }}
architecture = {{ id = "mlp", params = {{ hidden = [64] }} }}
seed = 7
samples = 40

[training]
epochs = 6
lr = 0.01

[[defenses]]
id = "standard"

[[defenses]]
id = "gda"
name = '{ODD}'
params = {{ copies = 2 }}

[[attacks]]
name = "fgsm-linf"
id = "fgsm"
budgets = [0.05, 0.1, 0.3]

[[attacks]]
name = "pgd l2"
id = "pgd"
params = {{ norm = "l2", steps = 3 }}
budgets = [0.5, 1.5]

[[attacks]]
id = "explodes"
budgets = [0.1]
"""
BROWSER = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"


class Explodes(FixedBudgetAttack):
    """Test attack that always raises, so the site shows a failed match."""

    id: ClassVar[str] = "explodes"

    def run(self, model, x, y, eps, targets):
        raise RuntimeError("kaboom <script>")


test_plugins = types.ModuleType("publish_test_plugins")
test_plugins.arena_register_attacks = arena.hookimpl(lambda register: register(Explodes))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A real tiny tournament (2 defenses, 3 attacks, 40 samples) and its published site."""
    tmp = tmp_path_factory.mktemp("publish")
    reg = arena.load_plugins(extra=[("publish-test-plugins", test_plugins)])
    path = tmp / "publish-test.toml"
    path.write_text(TOURNAMENT)
    store = Store(tmp / "r.db")
    runner = Runner(load_tournament(path, reg), store, cache_dir=tmp / "cache", progress=False,
                    source=str(path), source_text=TOURNAMENT)
    run_id = runner.run()
    index = site.publish(store, run_id, tmp / "site")
    return store, run_id, index


def _pages(index):
    return [index, *sorted((index.parent / "matches").glob("*.html")),
            *sorted((index.parent / "defenses").glob("*.html"))]


def test_publish_writes_every_page_plot_and_download(published):
    store, run_id, index = published
    out = index.parent
    assert index.name == "index.html"
    for name in ("assets/site.css", "assets/sort.js", "publish-test.toml", "results.json", "results.csv",
                 "plots/accuracy-fgsm-linf.svg", "plots/accuracy-pgd-l2.png", "plots/heatmap-linf-0.1.svg"):
        assert (out / name).is_file(), name
    assert (out / "publish-test.toml").read_text() == TOURNAMENT
    assert len(list((out / "matches").glob("*.html"))) == len(store.matches(run_id)) == 2 * 6
    assert sorted(p.name for p in (out / "defenses").glob("*.html")) == ["gda-b-x-1.html", "standard.html"]
    text = index.read_text()
    assert "standard" in text and "gda &lt;b&gt;&amp;&quot;σ $x_1$" in text and ODD not in text
    assert "arena run publish-test.toml" in text and 'id = &quot;explodes&quot;' in text


def test_pages_are_well_formed_escaped_and_offline(published):
    _, _, index = published
    for page in _pages(index):
        text = page.read_text()
        assert text.startswith("<!DOCTYPE html>\n<html lang=\"en\">"), page
        ET.fromstring(text.split("\n", 1)[1])  # polyglot markup: every tag closed, attributes quoted
        assert "<script>" not in text and "<b>" not in text, page
        assert not re.search(r'(src|href)="(https?:)?//', text), page
        for ref in re.findall(r'(?:src|href)="([^"#]+)', text):
            assert (page.parent / ref).resolve().is_file(), (page, ref)


def test_match_pages_show_status_error_config_and_provenance(published):
    store, run_id, index = published
    page = (index.parent / "matches" / "standard--explodes--0.1.html").read_text()
    assert "<strong>failed</strong>" in page and "RuntimeError: kaboom &lt;script&gt;" in page
    assert store.run(run_id).config_hash in page and "package torch" in page
    page = (index.parent / "matches" / "standard--pgd-l2--0.5.html").read_text()
    assert "<strong>ok</strong>" in page and "&quot;steps&quot;: 3" in page and "robust samples" in page
    text = index.read_text()
    assert 'href="matches/standard--pgd-l2--1.5.html"' in text and 'href="defenses/standard.html"' in text
    notes = index.read_text().split('id="notes"')[1]
    assert "explodes vs standard" in notes


def test_the_failed_attack_marks_the_worst_cases_it_should_cover(published):
    """explodes (ε=0.1) failed against both defenses: both worst cases at 0.1 are marked
    incomplete, on the index and on the match pages; those at 0.05 and 0.3 are complete."""
    _, _, index = published
    text = index.read_text()
    for defense in ("standard", "gda &lt;b&gt;&amp;&quot;σ $x_1$"):
        assert f"<li>* {defense}, worst ε=0.1: incomplete: explodes failed</li>" in text
    assert text.count('<td class="worst incomplete') == 2
    attacks = text.split('id="table-attacks-success-rate-in"')[1].split("</table>")[0]
    assert ">explodes<" in attacks and ">failed<" in attacks
    page = (index.parent / "matches" / "standard--fgsm-linf--0.1.html").read_text()
    assert "worst case at this ε" in page and "incomplete: explodes failed" in page
    page = (index.parent / "matches" / "standard--fgsm-linf--0.3.html").read_text()
    assert "(complete: every attack it covers finished ok)" in page


def test_publish_refreshes_its_own_site_but_not_a_foreign_directory(published, tmp_path):
    store, run_id, index = published
    assert site.publish(store, run_id, index.parent) == index
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(arena.ConfigError, match="not empty"):
        site.publish(store, run_id, tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_cli_publish_writes_the_site_and_refuses_a_foreign_directory(published, tmp_path):
    from click.testing import CliRunner

    from arena.cli import cli

    if "publish" not in cli.commands:
        pytest.skip("`arena publish` is not wired into arena/cli.py yet")
    store, _, _ = published
    result = CliRunner().invoke(cli, ["publish", str(store.path), str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "site" / "index.html").is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["publish", str(store.path), str(tmp_path / "other")])
    assert result.exit_code == 2 and "not empty" in result.output and "Traceback" not in result.output


def test_plots_are_real_png_and_svg_with_deterministic_names(published, tmp_path):
    store, run_id, _ = published
    curves = plots.accuracy_vs_budget(store, run_id, tmp_path)
    maps = plots.heatmap(store, run_id, tmp_path)
    assert [p.name for p in curves] == ["accuracy-fgsm-linf.png", "accuracy-fgsm-linf.svg", "accuracy-pgd-l2.png",
                                        "accuracy-pgd-l2.svg", "accuracy-explodes.png", "accuracy-explodes.svg"]
    assert [p.name for p in maps] == ["heatmap-l2-0.5.png", "heatmap-l2-0.5.svg",
                                      "heatmap-linf-0.1.png", "heatmap-linf-0.1.svg"]
    for path in curves + maps:
        data = path.read_bytes()
        if path.suffix == ".png":
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
        else:
            assert ET.fromstring(data).tag == "{http://www.w3.org/2000/svg}svg"
    again = plots.heatmap(store, run_id, tmp_path / "again", budget=0.3)
    assert [p.name for p in again] == ["heatmap-linf-0.3.png", "heatmap-linf-0.3.svg"]
    assert plots.heatmap(store, run_id, tmp_path / "same")[1].read_bytes() == maps[1].read_bytes()
    with pytest.raises(arena.ConfigError, match="budgets present: 0.05, 0.1, 0.3, 0.5, 1.5"):
        plots.heatmap(store, run_id, tmp_path, budget=0.2)


def test_slugs_are_unique():
    assert plots.unique_slugs(["PGD L2", "pgd-l2", "a/../b"]) == {"PGD L2": "pgd-l2", "pgd-l2": "pgd-l2-2",
                                                                   "a/../b": "a-b"}


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium through selenium, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    for tool in (BROWSER, DRIVER):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not found (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _column(driver, table, index):
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
    return [row.find_elements(By.TAG_NAME, "td")[index] for row in rows]


def test_site_renders_sorts_and_links_in_chromium(published, browser):
    from selenium.webdriver.common.by import By

    _, _, index = published
    browser.get(index.as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    tables = {t.find_elements(By.CSS_SELECTOR, "thead th")[1].text: t
              for t in browser.find_elements(By.CSS_SELECTOR, "table.sortable")}
    per_norm = [t for t in browser.find_elements(By.CSS_SELECTOR, "table.sortable")
                if t.find_elements(By.CSS_SELECTOR, "thead th")[1].text == "defense"]
    assert [t.get_attribute("id") for t in per_norm] == ["table-l2", "table-linf"]
    assert all(len(t.find_elements(By.CSS_SELECTOR, "tbody tr")) == 2 for t in per_norm)  # one row per defense
    if "attack" in tables:  # the attacks' ranking, when the leaderboard has one
        assert "fgsm-linf" in tables["attack"].text and "pgd l2" in tables["attack"].text
    marked = browser.find_elements(By.CSS_SELECTOR, "#table-linf td.incomplete")
    assert len(marked) == 2 and all(c.text.endswith("*") and c.is_displayed() for c in marked)
    assert all("incomplete: explodes failed" in c.get_attribute("title") for c in marked)
    footnotes = browser.find_element(By.ID, "incomplete-linf")
    assert footnotes.is_displayed() and "worst ε=0.1: incomplete: explodes failed" in footnotes.text
    images = browser.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
    assert images and all(w > 0 for w in images)
    headers = browser.find_elements(By.CSS_SELECTOR, "#table-linf thead th")
    names = [c.text for c in _column(browser, "table-linf", 1)]
    headers[1].click()
    assert [c.text for c in _column(browser, "table-linf", 1)] == sorted(names, key=str.lower)
    assert headers[1].get_attribute("aria-sort") == "ascending"
    headers[1].click()
    assert [c.text for c in _column(browser, "table-linf", 1)] == sorted(names, key=str.lower, reverse=True)
    column = [h.text for h in headers].index("fgsm-linf ε=0.05")
    headers[column].click()
    values = [float(c.get_attribute("data-value")) for c in _column(browser, "table-linf", column)]
    assert values == sorted(values)
    _column(browser, "table-linf", column)[0].find_element(By.TAG_NAME, "a").click()
    assert "/matches/" in browser.current_url and "fgsm-linf vs" in browser.find_element(By.TAG_NAME, "h1").text
    assert "robust accuracy" in browser.find_element(By.CSS_SELECTOR, "dl.facts").text
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def _fits(driver):
    """Each leaderboard's scroll container and the page: (id, scrollWidth, clientWidth) of those
    wider than their box, and the window's inner width."""
    return driver.execute_script("""
        const boxes = Array.from(document.querySelectorAll('div.scroll'))
            .filter(d => d.querySelector('table.leaderboard'))
            .map(d => [d.querySelector('table').id, d.scrollWidth, d.clientWidth]);
        const page = document.documentElement;
        boxes.push(['document', page.scrollWidth, page.clientWidth]);
        return [window.innerWidth, boxes.filter(b => b[1] > b[2])];""")


def test_the_index_fits_a_1280_px_window_with_intervals_under_the_numbers(published, browser):
    from selenium.webdriver.common.by import By

    _, _, index = published
    browser.set_window_size(1280, 900)
    browser.get(index.as_uri())
    width, wider = _fits(browser)
    assert 1200 <= width <= 1280 and not wider, (width, wider)  # no horizontal scrolling anywhere
    spans = browser.find_elements(By.CSS_SELECTOR, "#table-linf span.ci")
    assert len(spans) == 2 * 7  # per defense: clean, 3 worst cases, fgsm-linf at 3 budgets (explodes failed)
    drawn = browser.execute_script("return arguments[0].map(s => [s.getAttribute('data-ci'), "
                                   "getComputedStyle(s, '::after').content, s.getBoundingClientRect().height])",
                                   spans)
    assert all(content == f'"{ci}"' and height > 5 for ci, content, height in drawn), drawn
    assert "40 samples" in spans[0].get_attribute("title") and "n = 40 samples" in browser.find_element(
        By.CSS_SELECTOR, "#table-linf caption").text
    worst = [c for c in browser.find_elements(By.CSS_SELECTOR, "#table-linf td.worst")]
    assert worst and all(re.fullmatch(r"\d+\.\d\*?", c.text) for c in worst)  # a cell's text stays its number


def test_a_flagged_defense_is_marked_and_the_ranking_columns_come_first(tmp_path, browser):
    """A defense whose model outputs probabilities (a sanity flag) gets a visible ⚑ with the flag
    as its title and a legend; with 4 long-named attacks × 3 budgets the table scrolls inside its box, but
    the rank, defense, clean and worst-case columns come first and show without scrolling."""
    from selenium.webdriver.common.by import By

    from arena.tournament.store import MatchRow

    store = Store(tmp_path / "f.db")
    run = store.start_run("flags", "h", {"dataset": {"id": "digits"}}, None, None, 1, 0.0, {})
    for d, checks in (("plain", {}), ("soft", {"outputs_probabilities": True})):
        store.save_model(run, defense=d, defense_id="standard", defense_kind="training-time", config={},
                         clean_accuracy=0.75, clean_mask="1110", false_positive_rate=None, cache_key=None,
                         train_seconds=0.0, checks=checks)
        for k in range(4):
            for b in (0.05, 0.1, 0.3):
                store.save_match(run, MatchRow(defense=d, attack=f"attack-number-{k}-with-a-long-name", budget=b,
                                               attack_id="fgsm",
                                               attack_config={}, norm="linf", knowledge="white-box", status="ok",
                                               robust_accuracy=0.5, success_rate=0.33, robust_mask="1100",
                                               mean_queries=10.0, wall_seconds=1.0))
    store.finish_run(run, 1.0, "finished")
    index = site.publish(store, run, tmp_path / "site")
    browser.set_window_size(1280, 900)
    browser.get(index.as_uri())
    flag = browser.find_element(By.CSS_SELECTOR, "#table-linf tr.flagged td.name span.flag")
    assert flag.is_displayed() and flag.text == "⚑" and "outputs probabilities" in flag.get_attribute("title")
    assert flag.find_element(By.XPATH, "./ancestor::tr").find_element(By.CSS_SELECTOR, "td.name a").text == "soft"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#table-linf tr.flagged")) == 1
    assert browser.find_element(By.ID, "flags-linf").is_displayed()
    headers = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#table-linf thead th")]
    assert headers[:6] == ["#", "defense", "clean", "worst ε=0.05", "worst ε=0.1", "worst ε=0.3"], headers
    box = browser.find_element(By.CSS_SELECTOR, "div.scroll")
    right = browser.execute_script(
        "const box = arguments[0].getBoundingClientRect().left + arguments[0].clientWidth;"
        "return Array.from(arguments[0].querySelectorAll('thead th')).slice(0, 6)"
        ".map(th => th.getBoundingClientRect().right <= box + 0.5)", box)
    assert all(right), right
    width, wider = _fits(browser)
    assert [w[0] for w in wider] == ["table-linf"]  # the wide table scrolls in its box, the page does not
