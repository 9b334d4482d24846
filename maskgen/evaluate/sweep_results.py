"""The results of a sweep: `results.csv`, `results.md`, `results.png` from the variants' eval files.

Rows of the table are methods (paper Figure 4 / Table 5 labels), columns split: domain; cells are "mean (s.e.)" of
Dice over cases, where with several seeds each case's Dice is first averaged over the seeds. `results.csv` has one row
per variant, split and domain (with `empty_class`, the Dice convention). Missing eval files are left out, so the
files can be rewritten after every finished variant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from maskgen.evaluate.metrics import Stat, mean_se
from maskgen.evaluate.sweep_plan import Variant, _unique

@dataclass
class ResultsTable:
    methods: list[str]                         # row labels, table order
    columns: list[tuple[str, str]]             # (split, domain), domain "all" = every case of the split
    cells: dict[tuple[str, str, str], Stat]    # (method, split, domain) -> seed-pooled mean (s.e.)
    seeds: dict[str, list[int]]                # method -> seeds found
    rows: list[dict[str, Any]]                 # one per variant, split, domain (results.csv)


def collect_results(out_dir: Path, variants: Sequence[Variant], splits: Sequence[str]) -> ResultsTable:
    """Read every finished variant's eval files (missing ones are left out)."""
    from maskgen.evaluate.evaluate import eval_paths, load_eval

    methods = _unique(v.label for v in variants)
    columns: list[tuple[str, str]] = []
    # (method, split) -> case_id -> (domain, [case Dice per seed])
    pooled: dict[tuple[str, str], dict[str, tuple[str, list[float]]]] = {}
    seeds: dict[str, list[int]] = {m: [] for m in methods}
    rows: list[dict[str, Any]] = []
    for v in variants:
        for split in splits:
            path = eval_paths(Path(out_dir) / v.name, split)[0]
            if not path.is_file():
                continue
            res = load_eval(path)
            if v.seed not in seeds[v.label]:
                seeds[v.label].append(v.seed)
            doms = list(res.by_domain)
            for d in doms + ["all"]:
                if (split, d) not in columns and (d != "all" or len(doms) > 1):
                    columns.append((split, d))
            for d, summ in list(res.by_domain.items()) + [("all", res.overall)]:
                rows.append({"variant": v.name, "method": v.label, "inputs": v.inputs, "mask_rate": v.mask_rate,
                             "dropout": v.dropout, "seed": v.seed, "split": split, "domain": d,
                             "dice": summ.overall.mean, "dice_se": summ.overall.se, "cases": summ.overall.n,
                             "step": res.settings.get("step"), "checkpoint": res.settings.get("checkpoint"),
                             "empty_class": res.empty_class})
            bucket = pooled.setdefault((v.label, split), {})
            for c in res.cases:
                bucket.setdefault(c.case_id, (c.domain, []))[1].append(c.mean)
    cells: dict[tuple[str, str, str], Stat] = {}
    for (method, split), cases in pooled.items():
        per_domain: dict[str, list[float]] = {}
        for domain, vals in cases.values():
            finite = [x for x in vals if math.isfinite(x)]
            m = sum(finite) / len(finite) if finite else math.nan
            per_domain.setdefault(domain, []).append(m)
            per_domain.setdefault("all", []).append(m)
        for d, vals in per_domain.items():
            cells[(method, split, d)] = mean_se(vals)
    # columns in split order, domains as first seen, "all" last within a split
    columns.sort(key=lambda c: (list(splits).index(c[0]), c[1] == "all"))
    return ResultsTable(methods, columns, cells, seeds, rows)


def write_results(out_dir: str | Path, variants: Sequence[Variant], splits: Sequence[str]) -> dict[str, Path] | None:
    """results.csv, results.md, results.png from the eval files present; None when there is none yet."""
    from maskgen.atomic import write_text_atomic
    from maskgen.evaluate.report import SE_BARS, grouped_bar_plot, markdown_table, write_csv

    out_dir = Path(out_dir)
    table = collect_results(out_dir, variants, splits)
    if not table.rows:
        return None
    paths = {"csv": out_dir / "results.csv", "md": out_dir / "results.md", "png": out_dir / "results.png"}
    write_csv(paths["csv"], table.rows, ["variant", "method", "inputs", "mask_rate", "dropout", "seed", "split",
                                         "domain", "dice", "dice_se", "cases", "step", "checkpoint", "empty_class"])
    header, body = results_markdown_rows(table)
    from maskgen.train.dice import EMPTY_CLASS_TEXT

    conventions = "; ".join(f"{c}: {EMPTY_CLASS_TEXT.get(c, c)}" for c in dict.fromkeys(r["empty_class"]
                                                                                        for r in table.rows))
    text = ("# Sweep results\n\nDice x100, mean (s.e.) over cases; with several seeds each case's Dice is first "
            f"averaged over the seeds. Columns: split: domain. Dice convention ({conventions}).\n\n"
            + markdown_table(header, body))
    write_text_atomic(paths["md"], text)
    methods = [m for m in table.methods if any((m, s, d) in table.cells for s, d in table.columns)]
    grouped_bar_plot(
        paths["png"], [f"{s}: {d}" for s, d in table.columns], methods,
        [[_cell(table, m, s, d).mean for s, d in table.columns] for m in methods],
        [[_cell(table, m, s, d).se for s, d in table.columns] for m in methods],
        title=f"Sweep: {out_dir.name}", note=f"{SE_BARS} (each case's Dice averaged over seeds first)",
    )
    return paths


def _cell(table: ResultsTable, method: str, split: str, domain: str) -> Stat:
    return table.cells.get((method, split, domain), Stat(math.nan, math.nan, 0))


def results_markdown_rows(table: ResultsTable) -> tuple[list[str], list[list[str]]]:
    header = ["method", "seeds"] + [f"{s}: {d}" for s, d in table.columns]
    body = []
    for m in table.methods:
        if not table.seeds.get(m):
            continue
        body.append([m, ",".join(str(s) for s in table.seeds[m])]
                    + [_cell(table, m, s, d).format() for s, d in table.columns])
    return header, body
