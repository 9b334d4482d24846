"""Robustness to simulated domain shifts of increasing strength (paper Appendix B.7, Figure 9 top and middle).

Every labelled case of the split is corrupted at each level of two shifts (`maskgen.evaluate.corruptions`):
- bias fields: random smooth multiplicative fields, `draws` (default 3) different fields per level, averaged;
- gamma: deterministic contrast change x ** gamma (gamma 1 = no change).
The corrupted image goes through the run's own extractor (features recomputed, as a new scan would be), then the
run predicts as in evaluation. Several runs (e.g. ERM and MaskGen) are scored on the same corrupted images: the
random fields depend only on (seed, case, level, draw), so the comparison is paired. All levels, the identity
included, recompute features from the stored image, so level 0 is directly comparable with the others.
Per level: each case's Dice averaged over draws, then mean (s.e.) over cases.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from maskgen.errors import MaskgenError
from maskgen.evaluate.corruptions import BiasFieldShift, GammaShift
from maskgen.evaluate.metrics import Stat, case_mean, mean_se

DEFAULT_BIAS_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
DEFAULT_GAMMA_LEVELS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
SHIFTS = ("bias", "gamma")


@dataclass
class RobustnessResult:
    runs: list[str]                                    # series names, in the order given
    levels: dict[str, tuple[float, ...]]               # shift -> levels
    # per_case[run][shift][level index] = list of per-case Dice (averaged over draws), in case order
    per_case: dict[str, dict[str, list[list[float]]]]
    case_ids: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    def stat(self, run: str, shift: str, level_index: int) -> Stat:
        return mean_se(self.per_case[run][shift][level_index])

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.settings,
            "cases": self.case_ids,
            "levels": {k: list(v) for k, v in self.levels.items()},
            "results": {
                run: {
                    shift: [{"level": lv, **self.stat(run, shift, i).as_dict(),
                             "per_case": [None if not np.isfinite(v) else float(v)
                                          for v in self.per_case[run][shift][i]]}
                            for i, lv in enumerate(self.levels[shift])]
                    for shift in self.levels
                }
                for run in self.runs
            },
        }


def _check_levels(bias_levels: Sequence[float], gamma_levels: Sequence[float], draws: int) -> None:
    try:
        for b in bias_levels:
            BiasFieldShift(float(b))
        for g in gamma_levels:
            GammaShift(float(g))
    except ValueError as e:
        raise MaskgenError(f"{e} (--bias-levels / --gamma-levels)") from None
    if draws < 1:
        raise MaskgenError(f"--draws {draws} must be >= 1 (the paper uses 3 bias fields per level).")
    if not bias_levels and not gamma_levels:
        raise MaskgenError("no corruption level given: pass --bias-levels and/or --gamma-levels.")


def series_names(run_dirs: Sequence[Path]) -> list[str]:
    names = [p.name for p in run_dirs]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" for p in run_dirs]
    if len(set(names)) < len(names):
        names = [str(p) for p in run_dirs]
    return names


def robustness_analysis(
    run_dirs: Sequence[str | Path],
    split: str = "test",
    checkpoint: str = "best",
    bias_levels: Sequence[float] = DEFAULT_BIAS_LEVELS,
    gamma_levels: Sequence[float] = DEFAULT_GAMMA_LEVELS,
    draws: int = 3,
    seed: int = 0,
    overlap: float = 0.5,
    device: str = "auto",
    weights: str | Path | None = None,
    max_cases: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    empty_class: str = "ignore",
) -> RobustnessResult:
    """Dice of every run on the split's cases under each shift level (see the module docstring)."""
    from maskgen.evaluate.runs import _check_overlap
    from maskgen.train.dice import check_empty_class

    _check_overlap(overlap)
    check_empty_class(empty_class)
    if max_cases is not None and max_cases < 1:
        raise MaskgenError(f"--max-cases {max_cases} must be >= 1 (or left out for every case).")
    _check_levels(bias_levels, gamma_levels, draws)
    if not run_dirs:
        raise MaskgenError("give at least one run folder.")
    run_paths = [Path(r) for r in run_dirs]
    names = series_names(run_paths)
    runs, infos = _open_runs(run_paths, names, split, checkpoint, device, max_cases)
    scorers = [_RunScorer(r, name, e, overlap, empty_class)
               for r, name, e in zip(runs, names, _extractors(runs, weights))]
    shifts = _shift_plan(bias_levels, gamma_levels, draws)
    levels = {name: tuple(_level(sh) for sh in shs) for name, shs, _ in shifts}
    per_case: dict[str, dict[str, list[list[float]]]] = {n: {s: [[] for _ in levels[s]] for s in levels} for n in names}
    total = len(infos) * sum(sum(1 if sh.identity else d for sh in shs) for _, shs, d in shifts)
    tick = _Ticker(progress, total)
    stores = {str(r.store.path): r.store for r in runs}
    t0 = time.perf_counter()
    for info in infos:
        originals = {sp: st.read_case(info.case_id) for sp, st in stores.items()}
        for shift_name, shift_list, n_draws in shifts:
            for li, sh in enumerate(shift_list):
                dice = _score_level(scorers, originals, sh, 1 if sh.identity else n_draws,
                                    [seed, zlib.crc32(info.case_id.encode()), SHIFTS.index(shift_name), li],
                                    lambda: tick(f"{info.case_id} {shift_name} {_level(sh):g}"))
                for name in names:
                    per_case[name][shift_name][li].append(dice[name])
    settings = {"runs": [str(p) for p in run_paths], "split": split, "checkpoint": checkpoint, "draws": draws,
                "seed": seed, "overlap": overlap, "empty_class": empty_class,
                "seconds": round(time.perf_counter() - t0, 3),
                "bias": "exp(Legendre polynomial field, degree 3), coefficients uniform in [-level, level]; "
                        "image rescaled to [0, 1]",
                "gamma": "x ** gamma on the [0, 1] image (MONAI AdjustContrast)"}
    return RobustnessResult(names, levels, per_case, [c.case_id for c in infos], settings)


def _open_runs(run_paths: Sequence[Path], names: Sequence[str], split: str, checkpoint: str, device: str,
               max_cases: int | None) -> tuple[list[Any], list[Any]]:
    """The loaded runs and the labelled cases of `split` (from the first run's store) that every run's store holds;
    MaskgenError when the runs segment different classes or a store lacks a case."""
    from maskgen.evaluate.runs import labelled_cases, open_run

    runs = [open_run(r, checkpoint, device) for r in run_paths]
    store = runs[0].store
    for r, name in zip(runs[1:], names[1:]):
        if r.store.pipeline.classes != store.pipeline.classes:
            raise MaskgenError(f"run {name} segments other classes than {names[0]}; compare runs of one dataset.")
    infos = labelled_cases(store, split)[:max_cases]
    for r, name in zip(runs, names):
        missing = [c.case_id for c in infos if c.case_id not in r.store]
        if missing:
            raise MaskgenError(f"run {name}'s store {r.store.path} lacks test cases {missing[:3]} of {store.path}.")
    return runs, infos


def _extractors(runs: Sequence[Any], weights: str | Path | None) -> list[Any]:
    """Each run's extractor (None for image-only runs); runs whose stores were made by the same extractor share
    one instance."""
    from maskgen.evaluate.runs import run_extractor
    from maskgen.extract.registry import identity_key

    built: dict[str, Any] = {}
    out = []
    for r in runs:
        if not r.uses_features:
            out.append(None)
            continue
        key = identity_key(r.store.extractor)
        if key not in built:
            built[key] = run_extractor(r, weights)
        out.append(built[key])
    return out


def _shift_plan(bias_levels: Sequence[float], gamma_levels: Sequence[float],
                draws: int) -> list[tuple[str, list[Any], int]]:
    """(shift name, one shift per level, draws per level) for each shift given levels; gamma is deterministic."""
    plan = [("bias", [BiasFieldShift(float(b)) for b in bias_levels], draws),
            ("gamma", [GammaShift(float(g)) for g in gamma_levels], 1)]
    return [p for p in plan if p[1]]


def _level(sh: Any) -> float:
    return float(sh.strength if isinstance(sh, BiasFieldShift) else sh.gamma)


@dataclass
class _RunScorer:
    """One run's side of the comparison: features recomputed from the corrupted image, then the run's Dice."""

    run: Any
    name: str
    extractor: Any          # None when the run does not use features
    overlap: float
    empty_class: str        # Dice convention (maskgen.train.dice)

    def case_dice(self, image: np.ndarray, label: np.ndarray, feats: np.ndarray | None) -> float:
        from maskgen.train.dice import dice_per_class

        pred = self.run.segment(image, feats, self.run.fresh_stats(feats), self.overlap)
        return case_mean(dice_per_class(pred, label, self.run.num_foreground, self.empty_class))


def _score_level(scorers: Sequence[_RunScorer], originals: dict[str, dict[str, Any]], shift: Any, draws: int,
                 seed: list[int], tick: Callable[[], None]) -> dict[str, float]:
    """{run name: case Dice averaged over `draws` corrupted versions of one case at one level}. Draw d uses the
    parameters sampled from default_rng(seed + [d]): the same field for every run and store (paired comparison);
    the features of a corrupted image are computed once per store and extractor."""
    from maskgen.evaluate.runs import features_for

    scores: dict[str, list[float]] = {s.name: [] for s in scorers}
    for draw in range(draws):
        params = shift.sample(np.random.default_rng([*seed, draw]))
        images = {sp: shift.apply(o["image"], params) for sp, o in originals.items()}
        feats_cache: dict[tuple[str, int], np.ndarray | None] = {}
        for s in scorers:
            sp = str(s.run.store.path)
            feats = None
            if s.extractor is not None:
                key = (sp, id(s.extractor))
                if key not in feats_cache:
                    feats_cache[key] = features_for(s.run, s.extractor, images[sp])
                feats = feats_cache[key]
            scores[s.name].append(s.case_dice(images[sp], originals[sp]["label"], feats))
        tick()
    return {name: _finite_mean(v) for name, v in scores.items()}


class _Ticker:
    """Counts finished steps and reports them to an optional progress(done, total, what) callback."""

    def __init__(self, progress: Callable[[int, int, str], None] | None, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, what: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, what)


def _finite_mean(values: Sequence[float]) -> float:
    vals = np.asarray(values, dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if vals.size else float("nan")





def write_robustness(result: RobustnessResult, out_dir: Path) -> dict[str, Path]:
    """`robustness-<split>.{json,csv,md,png}` in `out_dir`."""
    from maskgen.atomic import write_text_atomic
    from maskgen.config import write_json_atomic
    from maskgen.evaluate.report import line_plot, markdown_table, write_csv

    split = result.settings.get("split", "test")
    stem = out_dir / f"robustness-{split}"
    paths = {ext: stem.with_suffix(f".{ext}") for ext in ("json", "csv", "md", "png")}
    write_json_atomic(paths["json"], result.as_dict())
    rows = []
    for run in result.runs:
        for shift, lv in result.levels.items():
            for i, level in enumerate(lv):
                s = result.stat(run, shift, i)
                rows.append({"run": run, "shift": shift, "level": level, "dice": s.mean, "dice_se": s.se,
                             "cases": s.n})
    write_csv(paths["csv"], rows, ["run", "shift", "level", "dice", "dice_se", "cases"])
    text = f"# Robustness to simulated shifts ({split} split, Dice x100, mean (s.e.) over cases)\n"
    for shift, lv in result.levels.items():
        header, table = robustness_table(result, shift)
        what = (f"bias field, coefficient range +-level, {result.settings.get('draws')} draws per level"
                if shift == "bias" else "gamma (1 = no change)")
        text += f"\n## {what}\n\n" + markdown_table(header, table)
    write_text_atomic(paths["md"], text)
    panels = []
    for shift, lv in result.levels.items():
        panels.append({
            "title": "Bias field" if shift == "bias" else "Gamma / contrast",
            "xlabel": "bias coefficient range" if shift == "bias" else "gamma",
            "x": list(lv),
            "identity": 0.0 if shift == "bias" else 1.0,
            "logx": shift == "gamma",
            "series": {run: ([result.stat(run, shift, i).mean for i in range(len(lv))],
                             [result.stat(run, shift, i).se for i in range(len(lv))]) for run in result.runs},
        })
    line_plot(paths["png"], panels, note="Bands: \u00b11 standard error (s.e.) of the mean over cases")
    return paths


def robustness_table(result: RobustnessResult, shift: str) -> tuple[list[str], list[list[str]]]:
    header = [shift] + list(result.runs)
    rows = []
    for i, level in enumerate(result.levels[shift]):
        rows.append([f"{level:g}"] + [result.stat(run, shift, i).format() for run in result.runs])
    return header, rows
