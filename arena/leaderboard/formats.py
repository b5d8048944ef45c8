"""Writing a leaderboard in each text format, with every string escaped for that format.

Names, labels, error texts and notes come from tournament files and plugins, so none of them is
trusted: in every format control characters are shown (``\\x1b``) rather than sent, and line
breaks become spaces; then ``html`` escapes ``<>&"'``, ``markdown`` backslash-escapes its inline
markup (``|`` included, so a name cannot add a table column) and any block markup a text starts
with, and ``latex`` escapes its ten special characters (and ``<>|``, which its default fonts do
not have). The CSV cells that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``
first) get a leading ``'``; JSON is exact.

A cell marked incomplete (:class:`arena.leaderboard.coverage.Mark`) is written with
:data:`MARKER` after its number, and explained in a footnote under its table.
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


class Section(Protocol):
    """What is written of one table (:class:`arena.leaderboard.tables.Section`)."""

    norm: str
    headers: list[str]
    rows: list[list[object]]
    marks: dict[tuple[int, int], Mark]


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


def _cells(section: Section, esc: Callable[[object], str]) -> list[list[str]]:
    return [[esc(cell_text(v) + (MARKER if (i, j) in section.marks else "")) for j, v in enumerate(row)]
            for i, row in enumerate(section.rows)]


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
        table = tabulate(_cells(s, esc), headers=[esc(h) for h in s.headers], tablefmt="simple",
                         disable_numparse=True)
        parts.append("\n".join([f"{esc(s.norm)}:", table, *(esc(n) for n in footnotes(s))]))
    if any(s.marks for s in board.sections):
        parts.append(esc(LEGEND))
    if board.notes:
        parts.append("notes:\n" + "\n".join(f"- {esc(n)}" for n in board.notes))
    return "\n\n".join(parts)


def _markdown_text(board: Leaderboard, esc: Callable[[object], str]) -> str:
    block = markdown_block
    parts = [block(board.title)]
    for s in [*board.sections, *board.metric_sections]:
        parts.append(f"{block(s.norm)}:")
        parts.append(tabulate(_cells(s, esc), headers=[esc(h) for h in s.headers], tablefmt="github",
                              disable_numparse=True))
        if s.marks:
            parts.append("\n".join(f"- {block(n)}" for n in footnotes(s)))
    if any(s.marks for s in board.sections):
        parts.append(block(LEGEND))
    if board.notes:
        parts.append("notes:\n\n" + "\n".join(f"- {block(n)}" for n in board.notes))
    return "\n\n".join(parts)


def _latex_text(board: Leaderboard, esc: Callable[[object], str]) -> str:
    parts = [esc(board.title)]
    for s in [*board.sections, *board.metric_sections]:
        lines = [f"{esc(s.norm)}:", "", "\\begin{tabular}{l" + "r" * (len(s.headers) - 1) + "}", "\\toprule",
                 " & ".join(esc(h) for h in s.headers) + " \\\\", "\\midrule"]
        lines += [" & ".join(row) + " \\\\" for row in _cells(s, esc)]
        lines += ["\\bottomrule", "\\end{tabular}"]
        parts.append("\n".join(lines))
        parts += [esc(n) for n in footnotes(s)]
    if any(s.marks for s in board.sections):
        parts.append(esc(LEGEND))
    if board.notes:
        parts.append("notes:\n\\begin{itemize}\n" + "\n".join(f"\\item {esc(n)}" for n in board.notes)
                     + "\n\\end{itemize}")
    return "\n\n".join(parts)


def _html_text(board: Leaderboard, esc: Callable[[object], str]) -> str:
    parts = [f"<p>{esc(board.title)}</p>"]
    for s in [*board.sections, *board.metric_sections]:
        parts.append(f"<h2>{esc(s.norm)}</h2>\n" + tabulate(_cells(s, esc), headers=[esc(h) for h in s.headers],
                                                           tablefmt="unsafehtml", disable_numparse=True))
        parts += [f"<p class=\"footnote\">{esc(n)}</p>" for n in footnotes(s)]
    if any(s.marks for s in board.sections):
        parts.append(f"<p class=\"legend\">{esc(LEGEND)}</p>")
    if board.notes:
        parts.append("<h2>notes</h2>\n<ul>\n" + "\n".join(f"<li>{esc(n)}</li>" for n in board.notes) + "\n</ul>")
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
