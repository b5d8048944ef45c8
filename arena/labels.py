"""How a budget is written: one formatter for tables, flags, plots, the site and progress lines."""
from __future__ import annotations

import math


def budget_label(budget: float, *, ascii: bool = False) -> str:
    """``0.1`` -> ``0.1``; an unbounded budget -> ``∞`` (``inf`` with ``ascii=True``, for file
    names and URLs)."""
    if math.isinf(budget):
        return "inf" if ascii else "∞"
    return f"{budget:g}"
