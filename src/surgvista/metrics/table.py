"""Markdown tables of metric results (used by the evaluation outputs)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

STD_SUFFIX = "_std"


def nan_to_none(results: dict[str, float]) -> dict[str, float | None]:
    """JSON-friendly copy of a result dict (NaN -> None)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in results.items()}


def _cell(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


def _merge_std(results: Mapping[str, float], digits: int) -> dict[str, str]:
    """``{name: "mean ± std"}``: ``x`` (or ``x_mean``) and ``x_std`` become one cell ``x``."""
    cells, used = {}, set()
    for key, value in results.items():
        if key in used or key.endswith(STD_SUFFIX):
            continue
        base = key[: -len("_mean")] if key.endswith("_mean") else key
        std_key = base + STD_SUFFIX
        if std_key in results:
            cells[base] = f"{_cell(value, digits)} ± {_cell(results[std_key], digits)}"
            used.add(std_key)
        else:
            cells[key] = _cell(value, digits)
    for key, value in results.items():  # std without a mean: keep as is
        if key.endswith(STD_SUFFIX) and key not in used:
            cells[key] = _cell(value, digits)
    return cells


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def metrics_table(
    results: Mapping[str, float] | Mapping[str, Mapping[str, float]],
    keys: Sequence[str] | None = None,
    digits: int = 2,
    title: str | None = None,
    merge_std: bool = True,
) -> str:
    """A Markdown table of ``results``.

    * flat ``{metric: value}`` -> two columns ``metric | value``;
    * nested ``{row: {metric: value}}`` (runs, datasets, phases) -> one row per entry, one column per metric.

    With ``merge_std``, ``x``/``x_mean`` and ``x_std`` share one ``mean ± std`` cell named ``x``. ``keys``
    selects and orders the metrics (after merging); NaN prints as ``n/a``.
    """
    if not results:
        raise ValueError("metrics_table: empty results")
    nested = all(isinstance(v, Mapping) for v in results.values())
    rows = results if nested else {"": results}

    def cells(r: Mapping[str, float]) -> dict[str, str]:
        return _merge_std(r, digits) if merge_std else {k: _cell(v, digits) for k, v in r.items()}

    rendered = {name: cells(r) for name, r in rows.items()}
    columns = list(keys) if keys is not None else list(dict.fromkeys(k for r in rendered.values() for k in r))
    lines = [f"**{title}**", ""] if title else []
    if nested:
        lines.append("| | " + " | ".join(_escape(c) for c in columns) + " |")
        lines.append("|---|" + "---:|" * len(columns))
        for name, r in rendered.items():
            lines.append(f"| {_escape(name)} | " + " | ".join(r.get(c, "") for c in columns) + " |")
    else:
        lines += ["| metric | value |", "|---|---:|"]
        lines += [f"| {_escape(c)} | {rendered[''].get(c, '')} |" for c in columns]
    return "\n".join(lines) + "\n"
