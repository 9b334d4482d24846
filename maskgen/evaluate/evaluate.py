"""`evaluate_run`: Dice of a trained run on every case of one split of its store, summarised as the paper does.

Writes `eval-<split>.json` (settings, every case's per-class Dice, summaries overall and per domain) and
`eval-<split>.csv` (one row per case) into the run folder. Dice conventions: `maskgen.evaluate.metrics`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from maskgen.errors import MaskgenError
from maskgen.evaluate.metrics import CaseDice, Summary, from_json_float, summarize_by_domain
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
) -> EvalResult:
    """Predict every labelled case of `split` from the run's store and score it (Dice convention `empty_class`,
    see `maskgen.train.dice`); writes the eval files."""
    from maskgen.config import write_json_atomic
    from maskgen.evaluate.runs import _check_overlap, labelled_cases, open_run
    from maskgen.train.dice import dice_per_class

    if split not in SPLITS:
        raise MaskgenError(f"--split {split!r} is not one of {', '.join(SPLITS)}.")
    check_empty_class(empty_class)
    _check_overlap(overlap)
    run = open_run(run_dir, checkpoint, device, features)
    infos = labelled_cases(run.store, split)
    t0 = time.perf_counter()
    cases = []
    for i, info in enumerate(infos):
        data = run.store.read_case(info.case_id)
        pred = run.segment(data["image"], data["features"], run.stats(info), overlap)
        cases.append(CaseDice(info.case_id, info.domain,
                              tuple(dice_per_class(pred, data["label"], run.num_foreground, empty_class))))
        if progress is not None:
            progress(i + 1, len(infos), info.case_id)
    overall, by_domain = summarize_by_domain(cases)
    settings = {
        "run": str(Path(run_dir)),
        "checkpoint": checkpoint,
        "step": run.step,
        "overlap": overlap,
        "store": str(run.store.path),
        "inputs": run.cfg.inputs,
        "mask_rate": run.cfg.mask_rate,
        "seed": run.cfg.seed,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    result = EvalResult(split, run.classes, cases, overall, by_domain, settings, empty_class)
    if write:
        json_path, csv_path = eval_paths(run_dir, split)
        write_json_atomic(json_path, result.as_dict())
        write_eval_csv(csv_path, result)
    return result


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
