"""`maskgen sweep`: train and evaluate a grid of variants from one feature store, never re-running the extractor.

The grid (paper Figure 4 top and Table 5):
- method `maskgen`: for each `--inputs` mode and `--mask-rate`, one run per seed. View masking is only meaningful on
  the combined input, so `image` ("Image only", the ERM baseline) and `features` ("Reps. only") are trained once per
  seed at mask rate 0, whatever rates are asked for (the paper's baselines are unmasked; masking a single-source
  input would only blank whole samples); `both` gets every rate (rate 0 = naive concatenation).
- method `channel-dropout`: the generic-masking baseline of paper Table 5 (image-only input, channel dropout on the
  network's intermediate layers: `TrainConfig.dropout`), one run per `--dropout-rate` and seed.
Duplicate rates and seeds are dropped. Each variant trains in `<out>/<variant>/` by calling
`maskgen.train.loop.train` in-process, then is evaluated (`eval-<split>.json`) on each requested split.

Resumable: a variant whose eval files all exist is skipped; one with `last.pt` continues from it (`resume=True`);
one whose folder holds no checkpoint yet starts again. An existing variant folder trained with other options is an
error (use another `--out`). After every variant, `results.csv`, `results.md` (rows methods, columns split/domain,
"mean (s.e.)" as the paper prints Dice) and `results.png` (grouped bars, like Figure 4 top) are rewritten; seeds are
pooled by averaging each case's Dice over the seeds, then mean (s.e.) over cases.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from maskgen.errors import MaskgenError
from maskgen.evaluate.metrics import Stat, mean_se
from maskgen.store.kv import store_exists
from maskgen.store.location import as_location, same_store

METHODS = ("maskgen", "channel-dropout")
INPUT_ORDER = ("image", "features", "both")


@dataclass(frozen=True)
class Variant:
    method: str        # "maskgen" | "channel-dropout"
    inputs: str        # "image" | "features" | "both"
    mask_rate: float
    dropout: float
    seed: int

    @property
    def key(self) -> str:
        """The variant without its seed (one row of the results table)."""
        if self.method == "channel-dropout":
            return f"chdrop-p{_pct(self.dropout)}"
        if self.inputs == "both":
            return f"both-mr{_pct(self.mask_rate)}"
        return self.inputs

    @property
    def name(self) -> str:
        return f"{self.key}-s{self.seed}"

    @property
    def label(self) -> str:
        """Method name as the paper's Figure 4 / Table 5 print it."""
        if self.method == "channel-dropout":
            return f"Channel dropout (p={self.dropout:g})"
        if self.inputs == "image":
            return "Image only"
        if self.inputs == "features":
            return "Reps. only"
        return f"MR={_pct(self.mask_rate, pad=False)}%"

    def train_changes(self) -> dict[str, Any]:
        changes: dict[str, Any] = {"inputs": self.inputs, "mask_rate": self.mask_rate, "seed": self.seed}
        if self.method == "channel-dropout":
            changes["dropout"] = self.dropout
        return changes


def _pct(rate: float, pad: bool = True) -> str:
    v = round(rate * 100)
    return f"{v:02d}" if pad else str(v)


def _unique(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def plan_variants(
    mask_rates: Sequence[float],
    inputs: Sequence[str],
    seeds: Sequence[int],
    methods: Sequence[str] = ("maskgen",),
    dropout_rates: Sequence[float] | None = None,
) -> tuple[list[Variant], list[str]]:
    """The deduplicated grid, in table order (image, features, both by rate, channel dropout), seeds innermost;
    and notes saying what was collapsed or skipped."""
    notes: list[str] = []
    for m in methods:
        if m not in METHODS:
            raise MaskgenError(f"--method {m!r} is not one of {', '.join(METHODS)}.")
    for i in inputs:
        if i not in INPUT_ORDER:
            raise MaskgenError(f"--inputs {i!r} is not one of {', '.join(INPUT_ORDER)}.")
    rates = _unique(float(r) for r in mask_rates)  # each rate is checked by TrainConfig (run_sweep, before training)
    seeds = _unique(int(s) for s in seeds)
    if not seeds:
        raise MaskgenError("--seeds is empty: give at least one seed.")
    keyed: list[tuple[Any, ...]] = []
    if "maskgen" in methods:
        if not inputs:
            raise MaskgenError("--inputs is empty: give at least one of image, features, both.")
        if not rates:
            raise MaskgenError("--mask-rate is empty: give at least one rate.")
        for mode in INPUT_ORDER:
            if mode not in inputs:
                continue
            if mode == "both":
                keyed += [("maskgen", "both", r, 0.0) for r in rates]
            else:
                keyed.append(("maskgen", mode, 0.0, 0.0))
                if any(r > 0 for r in rates):
                    shown = "Image only (ERM)" if mode == "image" else "Reps. only"
                    notes.append(f"--inputs {mode}: trained at mask rate 0 only ({shown}); view masking applies to the "
                                 "combined input (--inputs both)")
    if "channel-dropout" in methods:
        drates = _unique(float(p) for p in (dropout_rates if dropout_rates is not None else [r for r in rates if r > 0]))
        if not drates:
            raise MaskgenError("--method channel-dropout needs a dropout rate: pass --dropout-rate (e.g. 0.25) "
                               "or a non-zero --mask-rate.")
        for p in drates:
            if not 0.0 < p < 1.0:
                raise MaskgenError(f"--dropout-rate {p} must be in (0, 1).")
        keyed += [("channel-dropout", "image", 0.0, p) for p in drates]
    variants = [Variant(m, i, r, p, s) for (m, i, r, p) in keyed for s in seeds]
    return variants, notes


# -- running ------------------------------------------------------------------------------------------------------
def variant_state(run_dir: Path, splits: Sequence[str], empty_class: str = "ignore") -> str:
    """'done' (every eval file present, scored with the `empty_class` convention), 'trained' (last.pt, an eval file
    missing or scored otherwise), 'partial' (folder without checkpoint), or 'new'."""
    from maskgen.evaluate.evaluate import eval_paths

    if all(_eval_convention(eval_paths(run_dir, s)[0]) == empty_class for s in splits):
        return "done"
    if (run_dir / "last.pt").is_file():
        return "trained"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        return "partial"
    return "new"


def _eval_convention(path: Path) -> str | None:
    """The Dice convention an eval file was scored with (None when it is missing or unreadable)."""
    from maskgen.evaluate.evaluate import LEGACY_EMPTY_CLASS

    try:
        return str(json.loads(path.read_text()).get("empty_class", LEGACY_EMPTY_CLASS))
    except (OSError, ValueError, AttributeError):
        return None


def _check_existing(run_dir: Path, cfg: Any) -> None:
    """A variant folder from an earlier invocation must have been trained with the same options."""
    from maskgen.config import config_diff
    from maskgen.train.resume import RUNTIME_FIELDS, read_run_config

    if not (run_dir / "config.json").is_file():
        return
    saved = read_run_config(run_dir)
    unset = ("crop_zyx",) if cfg.crop_zyx is None else ()
    diffs = [f"{k} {a!r} there, {b!r} now" for k, (a, b) in
             config_diff(saved, cfg, ignore=(*RUNTIME_FIELDS, "features", "out", "train_cases", *unset)).items()]
    if not same_store(saved.features, cfg.features):
        diffs.append(f"store {saved.features} there, {cfg.features} now")
    if diffs:
        raise MaskgenError(
            f"{run_dir} was trained with other options ({'; '.join(diffs)}); use another --out for a new sweep, "
            "or the same options to resume this one."
        )


def _check_splits(store: Path | str, splits: Sequence[str], checkpoint: str) -> None:
    """Before any training: every split to evaluate exists in the store with labelled cases."""
    from maskgen.evaluate.evaluate import SPLITS
    from maskgen.store.reader import FeatureStore

    if checkpoint not in ("best", "last"):
        raise MaskgenError(f"--checkpoint {checkpoint!r} must be best or last.")
    if not splits:
        raise MaskgenError("--splits is empty: give at least one of val, test.")
    fs = FeatureStore(store)
    for split in splits:
        if split not in SPLITS:
            raise MaskgenError(f"--splits {split!r} is not one of {', '.join(SPLITS)}.")
        if not any(c.has_label for c in fs.cases(split=split)):
            raise MaskgenError(f"{store} has no labelled case in split {split!r}; drop it from --splits.")


def run_sweep(
    store: str | Path,
    out_dir: str | Path,
    variants: Sequence[Variant],
    train_options: dict[str, Any],
    splits: Sequence[str] = ("val", "test"),
    checkpoint: str = "best",
    overlap: float = 0.5,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    empty_class: str = "ignore",
) -> dict[str, Any]:
    """Train and evaluate every variant (skipping finished ones); returns {"trained", "skipped", "evaluated"}
    lists of variant names and writes the results files. `empty_class`: the Dice convention of validation and
    evaluation (`maskgen.train.dice`)."""
    from maskgen.evaluate.evaluate import evaluate_run
    from maskgen.train.config import TrainConfig
    from maskgen.train.loop import train

    say = log or (lambda _msg: None)
    out_dir = Path(out_dir)
    store = as_location(store)  # a folder or an fsspec URL
    if not store_exists(store):
        raise MaskgenError(f"--features {store} does not exist; create the store with `maskgen extract`.")
    if not splits:
        raise MaskgenError("--splits is empty: give at least one split to evaluate (e.g. test).")
    _check_splits(store, splits, checkpoint)
    reserved = {"features", "out", "inputs", "mask_rate", "seed", "dropout", "empty_class"} & set(train_options)
    if reserved:
        raise MaskgenError(f"train options {sorted(reserved)} are set by the sweep itself.")
    # every variant's options are checked (TrainConfig) before anything is trained or written
    configs = [TrainConfig(features=str(store), out=str(out_dir / v.name), empty_class=empty_class, **train_options,
                           **v.train_changes()) for v in variants]
    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, list[str]] = {"trained": [], "skipped": [], "evaluated": []}
    for i, (v, cfg) in enumerate(zip(variants, configs)):
        run_dir = out_dir / v.name
        state = variant_state(run_dir, splits, empty_class)
        if state != "new":
            _check_existing(run_dir, cfg)
        head = f"[{i + 1}/{len(variants)}] {v.name} ({v.label}, seed {v.seed})"
        if state == "done":
            say(f"{head}: finished earlier, skipped")
            done["skipped"].append(v.name)
            continue
        if state == "trained":
            say(f"{head}: continuing from {run_dir / 'last.pt'}")
            # the run continues as saved (checked equal above); the crop is left to the saved config because
            # maskgen.config.from_dict gives it back as a list, which train's own check would see as a change
            train(cfg.replace(crop_zyx=None), resume=True, progress=progress)
        else:
            say(f"{head}: training" + (" again (no checkpoint was written)" if state == "partial" else ""))
            train(cfg, resume=False, overwrite=state == "partial", progress=progress)
        done["trained"].append(v.name)
        ckpt = checkpoint if (run_dir / f"{checkpoint}.pt").is_file() else "last"
        if ckpt != checkpoint:
            say(f"{head}: no {checkpoint}.pt (no validation case?), evaluating last.pt")
        for split in splits:
            evaluate_run(run_dir, split, ckpt, overlap, device=str(train_options.get("device", "auto")),
                         empty_class=empty_class)
        done["evaluated"].append(v.name)
        write_results(out_dir, variants, splits)
    write_results(out_dir, variants, splits)
    return done


# -- results ------------------------------------------------------------------------------------------------------
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
