"""Domain-based train / val / test assignment with subject-disjoint, seeded, reproducible splits.

A pipeline's `[splits]` lists which domains each split uses, e.g. BraTS:
    train = ["t1w", "t1gd", "t2w"]; val = ["flair"]; test = ["flair"]
    proportions = { train = 340, val = 48, test = 96 }

Rule: every subject goes to exactly one split, so no subject is shared between splits. The splits a subject can go to
are those that list at least one of its cases' domains. Subjects with the same set of possible splits form a group;
each group is ordered by a seeded hash of the subject id and divided in the given proportions (largest remainder,
restricted to the group's splits; equal shares without a proportions table, an error if the table lacks one of the
group's splits). A case is kept when its domain is listed by its
subject's split; other cases are dropped (e.g. the FLAIR scan of a BraTS training subject, the T1w scan of a
test subject). Cases whose domain no split lists are dropped too. The hash ordering needs no random generator, so
the split is identical on every machine, and adding a subject shifts other subjects only at the split boundaries.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import replace
from typing import Any, Iterable

from maskgen.data.cases import Case
from maskgen.errors import MaskgenError

SPLITS = ("train", "val", "test")


def split_counts(n: int, weights: dict[str, float], splits: tuple[str, ...]) -> dict[str, int]:
    """Divide `n` items among `splits` in proportion to `weights` (largest remainder; ties go to the earlier split)."""
    w = [max(0.0, float(weights.get(s, 1.0))) for s in splits]
    total = sum(w)
    if total <= 0:
        raise MaskgenError(
            f"[splits] proportions for {', '.join(splits)} are all 0, so {n} subjects have nowhere to go"
        )
    exact = [n * wi / total for wi in w]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(splits)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return dict(zip(splits, counts))


def _order_key(seed: int, subject: str) -> str:
    return hashlib.sha256(f"{seed}\x00{subject}".encode()).hexdigest()


def assign_splits(cases: Iterable[Case], rule: dict[str, Any]) -> list[Case]:
    """Cases with `split` set by the domain rule of `maskgen.data.pipeline.split_rule` (cases it drops are gone)."""
    cases = list(cases)
    domains: dict[str, tuple[str, ...]] = rule["domains"]
    proportions: dict[str, float] = rule.get("proportions", {})
    seed = int(rule.get("seed", 0))

    subject_domains: dict[str, set[str]] = defaultdict(set)
    for case in cases:
        subject_domains[case.subject_id].add(case.domain)

    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for subject, doms in subject_domains.items():
        possible = tuple(s for s in SPLITS if doms & set(domains.get(s, ())))
        if possible:
            groups[possible].append(subject)

    subject_split: dict[str, str] = {}
    for possible, subjects in groups.items():
        subjects.sort(key=lambda s: (_order_key(seed, s), s))
        if len(possible) == 1:
            counts = {possible[0]: len(subjects)}
        else:
            missing = [s for s in possible if s not in proportions]
            if proportions and missing:
                raise MaskgenError(
                    f"{len(subjects)} subjects (e.g. {subjects[0]}) have cases in domains of splits "
                    f"{', '.join(possible)}, but [splits] proportions gives no share for {', '.join(missing)}; "
                    f"add {' and '.join(f'{m} = ...' for m in missing)} to proportions"
                )
            counts = split_counts(len(subjects), proportions, possible)
        start = 0
        for split in possible:
            for subject in subjects[start : start + counts[split]]:
                subject_split[subject] = split
            start += counts[split]

    out = []
    for case in cases:
        split = subject_split.get(case.subject_id)
        if split is not None and case.domain in domains.get(split, ()):
            out.append(replace(case, split=split))
    return out
