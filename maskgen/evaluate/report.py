"""Tables (CSV, markdown, rich) and plots (PNG) shared by evaluate, sweep and the analyses.

Files are written atomically (temporary file in the same folder, then rename). Plots use matplotlib's
object-oriented API with the Agg canvas, so no global backend is switched.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Sequence

from maskgen.atomic import atomic_path, write_text_atomic

SE_BARS = "Error bars: \u00b11 standard error (s.e.) of the mean over cases"


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """One row per dict, columns in the given order; None/NaN written as empty cells."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: _cell(row.get(k)) for k in columns})
    write_text_atomic(path, buf.getvalue())


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return v


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; the first column left-aligned, the others right-aligned."""
    def esc(v: Any) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rich_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Any:
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for i, h in enumerate(header):
        table.add_column(str(h), justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*(str(v) for v in row))
    return table


def fmt(v: float | None, scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v * scale:+.{digits}f}" if signed else f"{v * scale:.{digits}f}"


def _figure(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Any, path: str | os.PathLike, note: str | None = None) -> None:
    """Write the figure as PNG; `note` (e.g. what the error bars are) is printed under the plot and also stored as
    the PNG's Description text chunk."""
    if note:
        fig.text(0.5, 0.0, note, ha="center", va="bottom", fontsize="small", color="dimgray")
        fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Description": note} if note else None)


def grouped_bar_plot(
    path: str | os.PathLike,
    groups: Sequence[str],
    series: Sequence[str],
    values: Sequence[Sequence[float]],
    errors: Sequence[Sequence[float]] | None = None,
    ylabel: str = "Dice (%)",
    title: str = "",
    scale: float = 100.0,
    zero_line: bool = False,
    note: str | None = None,
) -> None:
    """Bars of `values[s][g]` (series s, group g), grouped by `groups`, optional error bars (e.g. s.e.); `note`
    says under the plot what the error bars are."""
    import numpy as np

    n_g, n_s = len(groups), len(series)
    fig, ax = _figure(max(4.0, 1.1 + n_g * (0.35 * n_s + 0.6)), 3.6)
    width = 0.8 / max(n_s, 1)
    x = np.arange(n_g)
    cmap = _colors(n_s)
    for s in range(n_s):
        v = np.asarray([_nan(values[s][g]) * scale for g in range(n_g)])
        e = None if errors is None else np.asarray([_nan(errors[s][g]) * scale for g in range(n_g)])
        if e is not None:
            e = np.where(np.isfinite(e), e, 0.0)
        ax.bar(x + (s - (n_s - 1) / 2) * width, v, width, yerr=e, capsize=2, label=series[s], color=cmap[s])
    ax.set_xticks(x, list(groups), rotation=45 if n_g > 6 else 0, ha="right" if n_g > 6 else "center")
    ax.set_ylabel(ylabel)
    if zero_line:
        ax.axhline(0.0, color="black", linewidth=0.8)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small", ncols=min(n_s, 4), loc="best")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path, note)


def line_plot(
    path: str | os.PathLike,
    panels: Sequence[dict[str, Any]],
    ylabel: str = "Dice (%)",
    scale: float = 100.0,
    note: str | None = None,
) -> None:
    """Side-by-side panels; each {"title", "xlabel", "x": [...], "series": {name: (means, ses)}, "identity": x0,
    "logx": bool}. Error bands show +- s.e. (say so in `note`); a dashed vertical line marks the identity
    (no-corruption) level."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(panels), 3.4), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        x = np.asarray(panel["x"], dtype=float)
        names = list(panel["series"])
        colors = _colors(len(names))
        for color, name in zip(colors, names):
            means, ses = panel["series"][name]
            m = np.asarray([_nan(v) for v in means]) * scale
            s = np.asarray([_nan(v) for v in ses]) * scale
            ax.plot(x, m, marker="o", markersize=3, label=name, color=color)
            ok = np.isfinite(s)
            if ok.any():
                ax.fill_between(x[ok], (m - s)[ok], (m + s)[ok], alpha=0.2, color=color)
        if panel.get("identity") is not None:
            ax.axvline(panel["identity"], color="grey", linestyle="--", linewidth=1)
        if panel.get("logx"):
            from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(list(x)))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(ylabel)
        ax.set_title(panel.get("title", ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    _save(fig, path, note)


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
