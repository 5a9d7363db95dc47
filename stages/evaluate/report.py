"""Plain result tables (also valid Markdown)."""

from __future__ import annotations

from typing import Any


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> str:
    """A plain-text table (also valid Markdown) of dicts; numbers with 2 decimals (hamming with 4)."""
    columns = columns or tuple(rows[0].keys())

    def fmt(k: str, v: Any) -> str:
        if isinstance(v, float) and v != v:  # NaN: not applicable (e.g. no pseudo-labels)
            return "—"
        if isinstance(v, float):
            return f"{v:.4f}" if k.startswith("hamming") else f"{v:.2f}"
        return str(v)

    cells = [[fmt(c, r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep, *(line(r) for r in cells)])
