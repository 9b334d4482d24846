"""`evaluate_run`: Dice of a trained run on every case of one split of its store, summarised as the paper does.

Writes into the run folder `eval-<split>.json` (settings, every case's per-class Dice, summaries overall and per
domain), `eval-<split>.csv` (one row per case) and the nnU-Net-style `summary-<split>.json` (Dice, IoU, TP/FP/FN/TN,
n_pred, n_ref and optionally HD95 / NSD per case and class; `maskgen.evaluate.summary`). Dice conventions:
`maskgen.train.dice` and `maskgen.evaluate.metrics`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from maskgen.errors import MaskgenError
from maskgen.threads import reconfigure as reconfigure_threads
from maskgen.evaluate.metrics import CaseDice, Summary, from_json_float, summarize_by_domain
from maskgen.evaluate.summary import (
    DEFAULT_NSD_TOLERANCE_MM, CaseMetrics, case_metrics, check_tolerance, parse_metrics, summary_document,
)
from maskgen.train.dice import EMPTY_CLASS_TEXT, check_empty_class

SPLITS = ("train", "val", "test")
#: Evaluations written before the convention was recorded used nnU-Net's.
LEGACY_EMPTY_CLASS = "zero"


def convention_text(empty_class: str) -> str:
    return (f"Dice per foreground class; {EMPTY_CLASS_TEXT[empty_class]}; classes without a score are null and "
            "excluded from means; a case's Dice is the mean over its scored classes; summaries are mean and standard "
            "error (sample std / sqrt(n)) over cases.")


@dataclass
class EvalResult:
    split: str
    classes: tuple[str, ...]
    cases: list[CaseDice]
    overall: Summary
    by_domain: dict[str, Summary]
    settings: dict[str, Any] = field(default_factory=dict)
    empty_class: str = "ignore"
    scored: list[CaseMetrics] = field(default_factory=list)   # every metric per case (summary-<split>.json)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.settings,
            "split": self.split,
            "classes": list(self.classes),
            "empty_class": self.empty_class,
            "convention": convention_text(self.empty_class),
            "summary": {
                "all": self.overall.as_dict(self.classes),
                "by_domain": {d: s.as_dict(self.classes) for d, s in self.by_domain.items()},
            },
            "cases": [c.as_dict(self.classes) for c in self.cases],
        }


def eval_paths(run_dir: str | Path, split: str) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    return run_dir / f"eval-{split}.json", run_dir / f"eval-{split}.csv"


def summary_path(run_dir: str | Path, split: str) -> Path:
    """The nnU-Net-style `summary-<split>.json` (`maskgen.evaluate.summary`)."""
    return Path(run_dir) / f"summary-{split}.json"


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    checkpoint: str = "best",
    overlap: float = 0.5,
    device: str = "auto",
    features: str | Path | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    write: bool = True,
    empty_class: str = "ignore",
    metrics: str | Sequence[str] = ("dice",),
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_MM,
) -> EvalResult:
    """Predict every labelled case of `split` from the run's store and score it (Dice convention `empty_class`,
    see `maskgen.train.dice`; `metrics` adds "hd95" and/or "nsd" with `nsd_tolerance` in mm); writes
    `eval-<split>.json`, `eval-<split>.csv` and `summary-<split>.json`."""
    from maskgen.evaluate.runs import _check_overlap, labelled_cases, open_run

    if split not in SPLITS:
        raise MaskgenError(f"--split {split!r} is not one of {', '.join(SPLITS)}.")
    check_empty_class(empty_class)
    metrics = parse_metrics(metrics)
    check_tolerance(nsd_tolerance)
    _check_overlap(overlap)
    reconfigure_threads(0)  # no worker processes here (after a sweep's training with its loader workers)
    run = open_run(run_dir, checkpoint, device, features)
    infos = labelled_cases(run.store, split)
    t0 = time.perf_counter()
    scored = []
    for i, info in enumerate(infos):
        data = run.read_case(info.case_id)
        pred = run.segment(data["image"], data["features"], run.stats(info), overlap)
        scored.append(CaseMetrics(info.case_id, info.domain, case_metrics(
            pred, data["label"], run.num_foreground, empty_class, metrics, info.spacing_zyx, nsd_tolerance)))
        if progress is not None:
            progress(i + 1, len(infos), info.case_id)
    cases = [CaseDice(c.case_id, c.domain, c.dice()) for c in scored]
    overall, by_domain = summarize_by_domain(cases)
    settings = {
        "run": str(Path(run_dir)), "checkpoint": checkpoint, "step": run.step, "overlap": overlap,
        "store": str(run.store.path), "inputs": run.cfg.inputs, "mask_rate": run.cfg.mask_rate, "seed": run.cfg.seed,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    result = EvalResult(split, run.classes, cases, overall, by_domain, settings, empty_class, scored)
    if write:
        write_eval(run_dir, result, metrics, nsd_tolerance)
    return result


def write_eval(run_dir: str | Path, result: EvalResult, metrics: Sequence[str], nsd_tolerance: float) -> None:
    """The three evaluation files of one split in the run folder (each written atomically)."""
    from maskgen.config import write_json_atomic

    json_path, csv_path = eval_paths(run_dir, result.split)
    write_json_atomic(json_path, result.as_dict())
    write_eval_csv(csv_path, result)
    settings = {**result.settings, "split": result.split, "empty_class": result.empty_class,
                "convention": convention_text(result.empty_class), "metrics": list(metrics),
                "distances": "mm, on the store's resampled grid (MONAI, voxel spacing of each case)"}
    if "nsd" in metrics:
        settings["nsd_tolerance_mm"] = nsd_tolerance
    write_json_atomic(summary_path(run_dir, result.split), summary_document(result.scored, result.classes, settings))


def write_eval_csv(path: Path, result: EvalResult) -> None:
    from maskgen.evaluate.report import write_csv

    columns = ["case_id", "domain", "mean"] + [f"dice_{c}" for c in result.classes] + ["empty_class"]
    rows = []
    for c in result.cases:
        row: dict[str, Any] = {"case_id": c.case_id, "domain": c.domain, "mean": c.mean,
                               "empty_class": result.empty_class}
        row.update({f"dice_{name}": v for name, v in zip(result.classes, c.dice)})
        rows.append(row)
    write_csv(path, rows, columns)


def load_eval(path: str | Path) -> EvalResult:
    """Read an `eval-<split>.json` back (summaries recomputed from the cases)."""
    import json

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        classes = tuple(doc["classes"])
        cases = [
            CaseDice(c["case_id"], c["domain"], tuple(from_json_float(c["dice"].get(k)) for k in classes))
            for c in doc["cases"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MaskgenError(f"cannot read evaluation {path}: {e}; re-run `maskgen evaluate`.") from None
    overall, by_domain = summarize_by_domain(cases)
    settings = {k: v for k, v in doc.items()
                if k not in ("split", "classes", "convention", "summary", "cases", "empty_class")}
    return EvalResult(doc.get("split", ""), classes, cases, overall, by_domain, settings,
                      doc.get("empty_class", LEGACY_EMPTY_CLASS))


def summary_table(result: EvalResult) -> tuple[list[str], list[list[str]]]:
    """Rows: each domain then "all"; columns: n, mean (s.e.) of the case Dice, then each class (x100)."""
    header = ["domain", "cases", "Dice"] + list(result.classes)
    rows = []
    groups: Sequence[tuple[str, Summary]] = list(result.by_domain.items())
    if len(groups) > 1 or not groups:
        groups = [*groups, ("all", result.overall)]
    for name, s in groups:
        rows.append([name, str(s.overall.n), s.overall.format()] + [p.format() for p in s.per_class])
    return header, rows
