"""Writing a leaderboard in each text format, with every string escaped for that format.

Names, labels, error texts and notes come from tournament files and plugins, so none of them is
trusted: in every format control characters are shown (``\\x1b``) rather than sent, and line
breaks become spaces; then ``html`` escapes ``<>&"'``, ``markdown`` backslash-escapes its inline
markup (``|`` included, so a name cannot add a table column) and any block markup a text starts
with, and ``latex`` escapes its ten special characters (and ``<>|``, which its default fonts do
not have). The CSV cells that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``
first) get a leading ``'``; JSON is exact.

A cell marked incomplete (:class:`arena.leaderboard.coverage.Mark`) is written with
:data:`MARKER` after its number, and explained in a footnote under its table. An accuracy with a
95 % interval is written ``45.0 [35.6–54.8]``; the sample count is said once, in the table's
caption where the whole table has one, else in an ``n`` column, else after each interval.

Each text format is a complete document: ``markdown`` has a heading for the title, one per table
(``## L∞``) and one for the notes; ``latex`` is a fragment to ``\\input`` (a ``table`` float per
table with booktabs rules, ``\\caption`` and ``\\label``; it needs ``\\usepackage{booktabs}``);
``html`` is a whole page (doctype, ``<head>`` with charset and title, a heading and a table per
section).
"""
from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Callable, Sequence
from html import escape as _html_escape
from typing import Protocol

from tabulate import tabulate

from arena.leaderboard.coverage import Mark


class Interval(Protocol):
    """A 95 % interval of an accuracy (:class:`arena.leaderboard.stats.Interval`)."""

    samples: int
    low: float
    high: float


class Section(Protocol):
    """What is written of one table (:class:`arena.leaderboard.tables.Section`)."""

    norm: str
    headers: list[str]
    rows: list[list[object]]
    marks: dict[tuple[int, int], Mark]
    intervals: dict[tuple[int, int], Interval]
    ranking: str

    @property
    def samples(self) -> int | None: ...

    def row_samples(self, i: int) -> int | None: ...


class Leaderboard(Protocol):
    """What is written of a leaderboard (:class:`arena.leaderboard.tables.Leaderboard`)."""

    title: str
    sections: Sequence[Section]
    metric_sections: Sequence[Section]
    notes: list[str]

MARKER = "*"
LEGEND = (f"{MARKER} incomplete: an attack this number should cover did not finish ok (or has no result), so it "
          "is taken over the others only (for a worst case, an upper bound); rows with one are listed after the "
          "ranked rows, unranked")
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def plain(text: object) -> str:
    """One line of printable text: whitespace controls become spaces, other controls (and bidi
    overrides) their escapes, so a name cannot drive the terminal or reorder a line."""
    out = []
    for c in str(text):
        if c in "\r\n\t\v\f":
            out.append(" ")
        elif c in _BIDI or unicodedata.category(c) == "Cc":
            out.append(ascii(c)[1:-1])
        else:
            out.append(c)
    return "".join(out)


def html(text: object) -> str:
    return _html_escape(plain(text), quote=True)


_MD_INLINE = re.compile(r"([\\`*_\[\]<>|~$&])")
_MD_BLOCK = re.compile(r"^(\s*)([#+\-=>]|\d+[.)])")


def markdown(text: object) -> str:
    """Backslash escapes (CommonMark: any ASCII punctuation may be escaped) for inline markup,
    HTML, math and table borders: enough inside a table cell."""
    return _MD_INLINE.sub(r"\\\1", plain(text))


def markdown_block(text: object) -> str:
    """:func:`markdown`, and block markup (a heading, list, quote) escaped where a paragraph or
    list item starts with it."""
    return _MD_BLOCK.sub(lambda m: m.group(1) + "\\" + m.group(2), markdown(text))


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
          ">": r"\textgreater{}", "|": r"\textbar{}", "ε": r"$\varepsilon$", "∞": r"$\infty$", "–": "--",
          "…": r"\ldots{}"}


def latex(text: object) -> str:
    return "".join(_LATEX.get(c, c) for c in plain(text))


ESCAPE: dict[str, Callable[[object], str]] = {"table": plain, "markdown": markdown, "latex": latex, "html": html}
TEXT_FORMATS = tuple(ESCAPE)


def cell_text(value: object) -> str:
    """A cell as read: a share as a percentage with one decimal, None as an en dash."""
    if isinstance(value, float):
        return f"{100 * value:.1f}"
    return "–" if value is None else str(value)


def interval_text(interval: Interval) -> str:
    """A 95 % interval as read after its number: ``[35.6–54.8]`` (in %, one decimal)."""
    return f"[{100 * interval.low:.1f}–{100 * interval.high:.1f}]"


NORM_NAMES = {"linf": "L∞", "l2": "L2", "l1": "L1", "l0": "L0"}


def heading(section: Section) -> str:
    """A table's heading: ``L∞`` for a norm's table, the section's name otherwise."""
    return NORM_NAMES.get(str(section.norm), str(section.norm))


def caption(section: Section) -> str:
    """What a table shows, in a sentence: its unit, how its rows are ranked, its sample count and
    interval (empty for a table with neither, such as a metric's)."""
    parts = []
    if section.intervals:
        parts.append("accuracy in %" + (f", ranked by {section.ranking}" if section.ranking else ""))
        n = section.samples
        parts.append((f"n = {n} samples" if n is not None else "n samples per row or cell as shown")
                     + ", 95 % Wilson interval in brackets")
    elif section.ranking:
        parts.append(f"ranked by {section.ranking}")
    return "; ".join(parts)


def _grid(section: Section, esc: Callable[[object], str],
          ci: Callable[[str], str] | None = None) -> tuple[list[str], list[list[str]]]:
    """The escaped headers and cells of ``section``: each number with its marker and interval
    (``ci`` escapes the interval, ``esc`` by default). The sample count is said once: in the
    caption where the whole table has one, else in an ``n`` column where each row has one, else
    after each interval."""
    ci = ci or esc
    per_row = section.intervals and section.samples is None and all(
        section.row_samples(i) is not None or not any(r == i for r, _ in section.intervals)
        for i in range(len(section.rows)))
    per_cell = section.intervals and section.samples is None and not per_row
    rows = []
    for i, row in enumerate(section.rows):
        cells = []
        for j, v in enumerate(row):
            text = esc(cell_text(v) + (MARKER if (i, j) in section.marks else ""))
            iv = section.intervals.get((i, j))
            if iv is not None:
                text += " " + ci(interval_text(iv) + (f" n={iv.samples}" if per_cell else ""))
            cells.append(text)
        if per_row:
            n = section.row_samples(i)
            cells.insert(1, esc("–" if n is None else str(n)))
        rows.append(cells)
    headers = [esc(h) for h in section.headers]
    if per_row:
        headers.insert(1, esc("n"))
    return headers, rows


def _cells(section: Section, esc: Callable[[object], str]) -> list[list[str]]:
    return _grid(section, esc)[1]


def footnotes(section: Section) -> list[str]:
    """One line per incomplete cell of ``section``, in table order."""
    return [f"{MARKER} {section.marks[k]}" for k in sorted(section.marks)]


def render_text(board: Leaderboard, fmt: str) -> str:
    """``board`` in one of :data:`TEXT_FORMATS`."""
    esc = ESCAPE[fmt]
    writer = {"table": _plain_text, "markdown": _markdown_text, "latex": _latex_text, "html": _html_text}[fmt]
    return writer(board, esc)


def _plain_text(board: Leaderboard, esc: Callable[[object], str]) -> str:
    parts = [esc(board.title)]
    for s in [*board.sections, *board.metric_sections]:
        headers, cells = _grid(s, esc)
        table = tabulate(cells, headers=headers, tablefmt="simple", disable_numparse=True)
        about = caption(s)
        parts.append("\n".join([f"{esc(s.norm)}:" + (f" {esc(about)}" if about else ""), table,
                                *(esc(n) for n in footnotes(s))]))
    if any(s.marks for s in board.sections):
        parts.append(esc(LEGEND))
    if board.notes:
        parts.append("notes:\n" + "\n".join(f"- {esc(n)}" for n in board.notes))
    return "\n\n".join(parts)


def _md_heading(text: object) -> str:
    """A heading's text: inline markup escaped, and every ``#`` (a closing sequence would drop it)."""
    return markdown(text).replace("#", "\\#")


def _markdown_text(board: Leaderboard, esc: Callable[[object], str]) -> str:
    """A heading for the title, one per table (``## L∞``, ``## Attacks ...``) and one for the notes."""
    block = markdown_block
    parts = [f"# {_md_heading(board.title)}"]
    for s in [*board.sections, *board.metric_sections]:
        parts.append(f"## {_md_heading(heading(s))}")
        if caption(s):
            parts.append(block(caption(s)[:1].upper() + caption(s)[1:] + "."))
        headers, cells = _grid(s, esc, ci=plain)  # an interval is digits, brackets, a dash: nothing to escape
        parts.append(tabulate(cells, headers=headers, tablefmt="github", disable_numparse=True))
        if s.marks:
            parts.append("\n".join(f"- {block(n)}" for n in footnotes(s)))
    if any(s.marks for s in board.sections):
        parts.append(block(LEGEND))
    if board.notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {block(n)}" for n in board.notes))
    return "\n\n".join(parts)


def _latex_start(text: str) -> str:
    """A row or item that starts with ``[`` would be read as the optional argument of the ``\\\\``
    or ``\\item`` before it: an empty group stops that."""
    return "{}" + text if text.lstrip().startswith("[") else text


def _latex_labels(sections: Sequence[Section]) -> list[str]:
    """A unique ``\\label`` key per table, from its name (``tab:arena-linf``)."""
    labels: list[str] = []
    for s in sections:
        base = "tab:arena-" + (re.sub(r"[^a-z0-9]+", "-", str(s.norm).lower()).strip("-") or "table")
        label, k = base, 2
        while label in labels:
            label, k = f"{base}-{k}", k + 1
        labels.append(label)
    return labels


LATEX_PREAMBLE = ("% arena leaderboard: a LaTeX document fragment (\\input it in a document's body).\n"
                  "% Needs \\usepackage{booktabs} in the preamble (\\toprule, \\midrule, \\bottomrule).")


def _latex_text(board: Leaderboard, esc: Callable[[object], str]) -> str:
    """A ``table`` float per table (booktabs rules, ``\\caption``, ``\\label``, its footnotes under
    the tabular), after the title; the legend and the notes after them."""
    parts = [LATEX_PREAMBLE, esc(board.title)]
    sections = [*board.sections, *board.metric_sections]
    for s, label in zip(sections, _latex_labels(sections)):
        headers, cells = _grid(s, esc)
        about = caption(s)
        lines = ["\\begin{table}[htbp]", "\\centering", "\\caption{" + esc(heading(s)) + (
                 f": {esc(about)}" if about else "") + "}", "\\label{" + label + "}",
                 "\\begin{tabular}{l" + "r" * (len(headers) - 1) + "}", "\\toprule",
                 _latex_start(" & ".join(headers)) + " \\\\", "\\midrule"]
        lines += [_latex_start(" & ".join(row)) + " \\\\" for row in cells]
        lines += ["\\bottomrule", "\\end{tabular}"]
        if s.marks:
            lines += ["", "\\footnotesize"] + [f"{_latex_start(esc(n))}\\par" for n in footnotes(s)]
        lines.append("\\end{table}")
        parts.append("\n".join(lines))
    if any(s.marks for s in board.sections):
        parts.append(esc(LEGEND))
    if board.notes:
        parts.append("notes:\n\\begin{itemize}\n" + "\n".join(f"\\item {_latex_start(esc(n))}" for n in board.notes)
                     + "\n\\end{itemize}")
    return "\n\n".join(parts)


HTML_STYLE = ("body{font:15px/1.5 system-ui,sans-serif;margin:1.5rem auto;max-width:80rem;padding:0 1rem}"
              "table{border-collapse:collapse;margin:.5rem 0 1rem;font-variant-numeric:tabular-nums}"
              "th,td{border:1px solid #d5dbe3;padding:.25rem .5rem;text-align:right}"
              "th:first-child,td:first-child{text-align:left}p.caption,p.footnote,p.legend{font-size:.85rem;"
              "color:#5b6573}")


def _html_text(board: Leaderboard, esc: Callable[[object], str]) -> str:
    """A whole HTML5 page: ``<head>`` with its charset and title, a heading and a table per
    section (its caption in the table), the footnotes, the legend and the notes."""
    parts = ["<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
             "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
             f"<title>{esc(board.title)}</title>\n<style>{HTML_STYLE}</style>\n</head>\n<body>",
             f"<h1>{esc(board.title)}</h1>"]
    for s in [*board.sections, *board.metric_sections]:
        headers, cells = _grid(s, esc)
        table = tabulate(cells, headers=headers, tablefmt="unsafehtml", disable_numparse=True)
        if caption(s):
            table = table.replace("<table>", f"<table>\n<caption>{esc(caption(s))}</caption>", 1)
        parts.append(f"<h2>{esc(heading(s))}</h2>\n" + table)
        parts += [f"<p class=\"footnote\">{esc(n)}</p>" for n in footnotes(s)]
    if any(s.marks for s in board.sections):
        parts.append(f"<p class=\"legend\">{esc(LEGEND)}</p>")
    if board.notes:
        parts.append("<h2>Notes</h2>\n<ul>\n" + "\n".join(f"<li>{esc(n)}</li>" for n in board.notes) + "\n</ul>")
    parts.append("</body>\n</html>\n")
    return "\n\n".join(parts)


def spreadsheet_safe(value: object) -> object:
    """A CSV cell that no spreadsheet runs as a formula (OWASP's advice: a leading ``'``)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def render_csv(rows: list[dict[str, object]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["defense"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: spreadsheet_safe(v) for k, v in r.items()} for r in rows)
    return buf.getvalue()
