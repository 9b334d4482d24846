"""Cross-domain stability of each feature channel (paper Appendix B.1): the same subject in two domains.

For every subject stored in at least two domains on the same grid (the demo data: one subject rendered in T1, T2
and FLAIR contrasts), and for every pair of its domains, compares the two volumes channel by channel over a region:
- `cka`: linear CKA (Kornblith et al., 2019) of the channel; for one channel it is the squared Pearson correlation
  (1 = the two domains give the same channel up to an affine change of intensity, sign included);
- `cosine`: cosine similarity of the raw (uncentred) channel values.
The raw image is compared the same way (row "image"), and all feature channels together (row "features (all)":
linear CKA of the voxels x C matrices and the mean per-voxel cosine of standardised channels, from
`maskgen.extract.stability.cross_domain_stability`). Results are averaged over subjects (mean, s.e.).

Subjects: the `subject` attribute of the store's case group when present, else the case id without its
`_<domain>` / `-<domain>` suffix (`sub-003_t2` in domain `t2` -> `sub-003`). Cases of one subject whose grids
differ (not co-registered) cannot be compared voxel by voxel and are skipped with a note.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from maskgen.errors import MaskgenError
from maskgen.evaluate.metrics import Stat, mean_se

REGIONS = ("foreground", "all")
IMAGE_ROW = "image"
ALL_FEATURES_ROW = "features (all)"


@dataclass(frozen=True)
class DomainPair:
    subject: str
    domain_a: str
    case_a: str
    domain_b: str
    case_b: str

    @property
    def domains(self) -> str:
        return f"{self.domain_a} vs {self.domain_b}"


@dataclass(frozen=True)
class PairRow:
    """Similarity of one row (image, one channel, or all features) for one subject and domain pair."""

    pair: DomainPair
    row: str
    cka: float
    cosine: float


@dataclass
class StabilityResult:
    rows: list[PairRow]
    channel_names: list[str]  # row order: image, feature 0.., features (all)
    domain_pairs: list[str]   # "a vs b" in order of appearance
    notes: list[str] = field(default_factory=list)

    def summary(self, metric: str) -> dict[str, dict[str, Stat]]:
        """{row: {domain pair: mean (s.e.) over subjects of `metric` ("cka" or "cosine")}}."""
        out: dict[str, dict[str, Stat]] = {}
        for name in self.channel_names:
            out[name] = {}
            for dp in self.domain_pairs:
                vals = [getattr(r, metric) for r in self.rows if r.row == name and r.pair.domains == dp]
                out[name][dp] = mean_se(vals)
        return out


def subject_of(case_id: str, domain: str, attrs: dict[str, Any] | None = None) -> str:
    """The subject of a case: its `subject` attribute, else the case id without a trailing `_domain`/`-domain`."""
    if attrs and attrs.get("subject"):
        return str(attrs["subject"])
    if domain:
        for sep in ("_", "-", "."):
            suffix = f"{sep}{domain}"
            if case_id.lower().endswith(suffix.lower()) and len(case_id) > len(suffix):
                return case_id[: -len(suffix)]
    return case_id


def find_pairs(cases: Sequence[Any], subjects: dict[str, str]) -> tuple[list[DomainPair], list[str]]:
    """Every pair of domains of each subject, with cases on the same grid; (pairs, notes about skipped ones).

    `cases`: store CaseInfo objects; `subjects`: case id -> subject.
    """
    by_subject: dict[str, list[Any]] = {}
    for c in cases:
        by_subject.setdefault(subjects[c.case_id], []).append(c)
    domain_order: dict[str, int] = {}
    for c in cases:
        domain_order.setdefault(c.domain, len(domain_order))
    pairs: list[DomainPair] = []
    notes: list[str] = []
    for subject in sorted(by_subject):
        group = sorted(by_subject[subject], key=lambda c: (domain_order[c.domain], c.case_id))
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                if a.domain == b.domain:
                    continue
                if tuple(a.shape_zyx) != tuple(b.shape_zyx):
                    notes.append(
                        f"subject {subject}: {a.case_id} {tuple(a.shape_zyx)} and {b.case_id} {tuple(b.shape_zyx)} "
                        "are on different grids (not co-registered); skipped"
                    )
                    continue
                pairs.append(DomainPair(subject, a.domain, a.case_id, b.domain, b.case_id))
    return pairs, notes


def _channel_cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return math.nan
    return float(a @ b / (na * nb))


def compare_pair(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], pair: DomainPair, region: str = "foreground",
    max_voxels: int = 200_000, seed: int = 0,
) -> list[PairRow]:
    """Rows (image, each channel, all features) for two co-registered cases read from the store."""
    from maskgen.extract.stability import cross_domain_stability, linear_cka

    if region not in REGIONS:
        raise MaskgenError(f"--region {region!r} is not one of {', '.join(REGIONS)}")
    grid = a["image"].shape[1:]
    if region == "foreground" and a.get("label") is not None and b.get("label") is not None:
        mask = (a["label"] > 0) | (b["label"] > 0)
        if mask.sum() < 2:
            mask = np.ones(grid, bool)
    else:
        mask = np.ones(grid, bool)
    idx = np.flatnonzero(mask)
    if idx.size > max_voxels:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_voxels, replace=False))

    def values(x: np.ndarray) -> np.ndarray:  # (C, Z, Y, X) -> (n, C) float64 over the sampled voxels
        return x.reshape(x.shape[0], -1)[:, idx].T.astype(np.float64)

    rows = []
    ia, ib = values(a["image"]), values(b["image"])
    rows.append(PairRow(pair, IMAGE_ROW, linear_cka(ia, ib), _channel_cosine(ia[:, 0], ib[:, 0])))
    fa, fb = values(a["features"]), values(b["features"])
    for c in range(fa.shape[1]):
        rows.append(PairRow(pair, f"feature {c}", linear_cka(fa[:, c:c + 1], fb[:, c:c + 1]),
                            _channel_cosine(fa[:, c], fb[:, c])))
    joint = cross_domain_stability(a["features"], b["features"], mask=mask, max_voxels=max_voxels, seed=seed)
    rows.append(PairRow(pair, ALL_FEATURES_ROW, float(joint["cka"]), float(joint.get("cosine", math.nan))))
    return rows


def stability_analysis(
    store_path: str | Path, region: str = "foreground", max_voxels: int = 200_000, seed: int = 0,
    progress: Any = None,
) -> StabilityResult:
    """Compare every subject's domains in a store; MaskgenError when no subject has two co-registered domains."""
    from maskgen.store.reader import FeatureStore
    from maskgen.store.meta import read_case_attrs

    store = FeatureStore(store_path)
    cases = store.cases()
    if not cases:
        raise MaskgenError(f"{store_path} has no complete case; run `maskgen extract` first")
    subjects = {c.case_id: subject_of(c.case_id, c.domain, read_case_attrs(store.io, c.case_id)) for c in cases}
    pairs, notes = find_pairs(cases, subjects)
    if not pairs:
        raise MaskgenError(
            f"{store_path}: no subject is stored in two domains on the same grid, so cross-domain stability cannot "
            "be measured. It needs paired cases (e.g. the demo data, where every test subject has t1, t2 and flair); "
            "cases are paired by the `subject` case attribute or by ids like sub-003_t1 / sub-003_t2."
        )
    rows: list[PairRow] = []
    cache: dict[str, dict[str, np.ndarray]] = {}
    for i, pair in enumerate(pairs):
        for cid in (pair.case_a, pair.case_b):
            if cid not in cache:
                cache[cid] = store.read_case(cid)
        rows.extend(compare_pair(cache[pair.case_a], cache[pair.case_b], pair, region, max_voxels, seed))
        # keep only cases still needed by later pairs
        needed = {p.case_a for p in pairs[i + 1 :]} | {p.case_b for p in pairs[i + 1 :]}
        for cid in list(cache):
            if cid not in needed:
                del cache[cid]
        if progress is not None:
            progress(i + 1, len(pairs))
    names = [IMAGE_ROW] + [f"feature {c}" for c in range(store.num_features)] + [ALL_FEATURES_ROW]
    order = {d: i for i, d in enumerate(dict.fromkeys(c.domain for c in cases))}
    domain_pairs = [p.domains for p in sorted({(p.domain_a, p.domain_b): p for p in pairs}.values(),
                                               key=lambda p: (order[p.domain_a], order[p.domain_b]))]
    return StabilityResult(rows=rows, channel_names=names, domain_pairs=domain_pairs, notes=notes)


def stability_table(result: StabilityResult, metric: str) -> tuple[list[str], list[list[str]]]:
    """Rows: image, each channel, all features; columns: each domain pair; cells mean (s.e.) over subjects."""
    summ = result.summary(metric)
    header = ["channel"] + result.domain_pairs
    rows = [[name] + [summ[name][dp].format(scale=1.0, digits=3) for dp in result.domain_pairs]
            for name in result.channel_names]
    return header, rows


def write_stability(result: StabilityResult, out_dir: Path, title: str = "") -> dict[str, Path]:
    """`stability.{json,csv,md,png}` in `out_dir` (the plot shows CKA per channel and domain pair)."""
    from maskgen.atomic import write_text_atomic
    from maskgen.config import write_json_atomic
    from maskgen.evaluate.report import grouped_bar_plot, markdown_table, write_csv

    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"stability.{ext}" for ext in ("json", "csv", "md", "png")}
    summary = {m: {row: {dp: s.as_dict() for dp, s in by_dp.items()} for row, by_dp in result.summary(m).items()}
               for m in ("cka", "cosine")}
    write_json_atomic(paths["json"], {
        "channels": result.channel_names, "domain_pairs": result.domain_pairs, "notes": result.notes,
        "subjects": sorted({r.pair.subject for r in result.rows}), "summary": summary,
    })
    write_csv(paths["csv"], [
        {"subject": r.pair.subject, "domain_a": r.pair.domain_a, "domain_b": r.pair.domain_b,
         "case_a": r.pair.case_a, "case_b": r.pair.case_b, "channel": r.row, "cka": r.cka, "cosine": r.cosine}
        for r in result.rows
    ], ["subject", "domain_a", "domain_b", "case_a", "case_b", "channel", "cka", "cosine"])
    n_subj = len({r.pair.subject for r in result.rows})
    text = (f"# Cross-domain stability{(' of ' + title) if title else ''}\n\n{n_subj} subjects; mean (s.e.) over "
            "subjects. Linear CKA (1 = same up to an affine change) and cosine similarity of each channel between "
            "two domains of the same subject; \"image\" is the raw input for reference.\n")
    for metric, label in (("cka", "Linear CKA"), ("cosine", "Cosine similarity")):
        header, rows = stability_table(result, metric)
        text += f"\n## {label}\n\n" + markdown_table(header, rows)
    if result.notes:
        text += "\n## Notes\n\n" + "".join(f"- {n}\n" for n in result.notes)
    write_text_atomic(paths["md"], text)
    summ = result.summary("cka")
    grouped_bar_plot(
        paths["png"], result.channel_names, result.domain_pairs,
        [[summ[name][dp].mean for name in result.channel_names] for dp in result.domain_pairs],
        [[summ[name][dp].se for name in result.channel_names] for dp in result.domain_pairs],
        ylabel="linear CKA", title=f"Cross-domain stability{(' of ' + title) if title else ''} (linear CKA)", scale=1.0,
        note="Error bars: \u00b11 standard error (s.e.) of the mean over subjects",
    )
    return paths
