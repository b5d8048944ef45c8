"""Small pieces of the published site's HTML: numbers, times, links, fact lists, JSON blocks.

Each returns markup that is safe to put in a page: what it shows of its argument is escaped.
"""
from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote


def fmt(value: Any, kind: str = "") -> str:
    """Numbers for reading, as escaped HTML: ``pct`` as a percentage, ``s`` as seconds; None as an
    en dash; anything that is not a number (a crafted file's text) as escaped text."""
    if value is None:
        return "–"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return escape(str(value))
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "s":
        return f"{value:.2f} s"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def when(t: float | None) -> str:
    """A Unix time as UTC, to the second."""
    if t is None:
        return "–"
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return escape(str(t))


def link(path: str | None) -> str:
    """A relative link as an attribute value: URL-quoted (``/`` kept), then HTML-escaped."""
    return escape(quote(path or "", safe="/#"))


def facts(pairs: list[tuple[str, str]]) -> str:
    """A definition list of (label, already-escaped HTML) pairs."""
    items = "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>\n" for k, v in pairs)
    return f"<dl class=\"facts\">\n{items}</dl>\n"


def json_pre(data: Any) -> str:
    """Pretty, key-sorted, escaped JSON in a <pre>."""
    return f"<pre>{escape(json.dumps(data, indent=2, sort_keys=True, default=str))}</pre>\n"


def is_number(text: str) -> bool:
    """Whether ``text`` reads as a finite number ("12", "3.5"), so that it sorts as one."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
