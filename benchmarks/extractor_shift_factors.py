"""Which part of a demo domain shift costs an extractor its stability: contrast, resolution, or noise and bias.

The demo's FLAIR and T2 differ from its T1 in three ways at once (tissue intensities, thick slices and blur, and
stronger noise, texture and bias field). This benchmark renders the same demo subjects (`DemoConfig.contrasts`)
with each factor switched on alone and reports, per extractor, the CKA inside the brain between each test subject's
T1 and every variant (`extractor_quality.stability`'s measure, mean of the test subjects):

- `flair` / `t2`: the demo contrasts as they are;
- `flair_hr` / `t2_hr`: their intensities, noise and bias at T1's resolution (T1's blur, no thick slices);
- `flair_contrast` / `t2_contrast`: only their tissue intensities (T1's resolution, noise, texture and bias ranges);
- `t1_lr`: T1 intensities at FLAIR's resolution (FLAIR's blur and slice thickness);
- `t1_repeat`: T1 again with new random noise, texture and bias (the ceiling for every row).

1 - CKA of a row is what that factor costs; e.g. `t1_repeat` - `flair_contrast` is the cost of FLAIR's intensities.

    python benchmarks/extractor_shift_factors.py --data /tmp/shift-factors --weights W.pt --extractors mind,pretrained
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as provenance  # noqa: E402  (git rev, machine, versions: shared format)
from benchmarks.extractor_quality import RESULTS, build_extractors, features_of, load_demo  # noqa: E402


def factor_contrasts() -> tuple:
    """The source T1, the two demo targets, and their one-factor variants (names as in the module docstring)."""
    from maskgen.demo.contrast import FLAIR, T1, T2

    t1_resolution = {"blur_fwhm_mm": T1.blur_fwhm_mm, "slice_thickness_mm": (0.0, 0.0)}
    t1_acquisition = {**t1_resolution, "noise_std": T1.noise_std, "bias_std": T1.bias_std,
                      "texture_std": T1.texture_std, "gain": T1.gain}
    variants = [T1, FLAIR, T2, dataclasses.replace(T1, name="t1_repeat")]
    for target in (FLAIR, T2):
        variants.append(dataclasses.replace(target, name=f"{target.name}_hr", **t1_resolution))
        variants.append(dataclasses.replace(target, name=f"{target.name}_contrast", **t1_acquisition))
    variants.append(dataclasses.replace(T1, name="t1_lr", blur_fwhm_mm=FLAIR.blur_fwhm_mm,
                                        slice_thickness_mm=FLAIR.slice_thickness_mm, slice_axis=FLAIR.slice_axis))
    return tuple(variants)


def factor_stability(cases: dict, feats: dict, max_voxels: int) -> dict[str, float]:
    """Mean CKA inside the brain between each test subject's t1 and each of its other renderings."""
    from maskgen.extract.stability import cross_domain_stability

    by_subject: dict[str, dict[str, str]] = {}
    for cid, c in cases.items():
        if c["split"] == "test":
            by_subject.setdefault(c["subject"], {})[c["domain"]] = cid
    per_domain: dict[str, list[float]] = {}
    for doms in by_subject.values():
        a = doms["t1"]
        for domain, b in doms.items():
            if domain != "t1":
                row = cross_domain_stability(feats[a], feats[b], mask=cases[a]["label"] > 0, max_voxels=max_voxels)
                per_domain.setdefault(domain, []).append(row["cka"])
    return {d: float(np.mean(v)) for d, v in sorted(per_domain.items())}


def main(argv: list[str] | None = None) -> int:
    from maskgen.demo.dataset import DemoConfig, generate_demo_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="folder for the rendered variants (written once, reused when complete)")
    parser.add_argument("--weights", type=Path, default=None, help="maskgen-pretrained weights (maskgen pretrain)")
    parser.add_argument("--anatomix-weights", type=Path, default=None, help="public anatomix.pth, if available")
    parser.add_argument("--extractors", default="image,mind,pretrained",
                        help="comma-separated subset of: image, mind, pretrained, untrained, anatomix")
    parser.add_argument("--subjects", type=int, default=12, help="demo subjects (the test split is a quarter)")
    parser.add_argument("--spacing", type=int, default=2, help="demo spacing in mm")
    parser.add_argument("--max-voxels", type=int, default=50000, help="voxels per comparison")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.jsonl")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    t0 = time.perf_counter()
    extractors = build_extractors(args.weights, args.anatomix_weights)
    wanted = [e.strip() for e in args.extractors.split(",") if e.strip()]
    unknown = sorted(set(wanted) - set(extractors))
    if unknown:
        parser.error(f"--extractors: {unknown} not available (have {sorted(extractors)}; "
                     "`pretrained` and `untrained` need --weights, `anatomix` needs --anatomix-weights)")
    generate_demo_dataset(args.data, DemoConfig(subjects=args.subjects, spacing=args.spacing,
                                                contrasts=factor_contrasts()))
    cases = load_demo(args.data, splits=("test",))
    dataset = {"path": str(args.data), "subjects": args.subjects, "spacing": args.spacing, "test_cases": len(cases)}
    for name in wanted:
        extractor = extractors[name]
        feats = {cid: features_of(extractor, c["image"]) for cid, c in cases.items()}
        cka = factor_stability(cases, feats, args.max_voxels)
        print(f"{name:>10}  " + "  ".join(f"{d} {v:.3f}" for d, v in cka.items()), flush=True)
        if not args.no_record:
            provenance.record("extractor_shift_factors", {
                "extractor": name, "weights_sha256": getattr(extractor, "weights_sha256", None), "cka_vs_t1": cka,
                "dataset": dataset, "threads": torch.get_num_threads(),
                "total_s": round(time.perf_counter() - t0, 1)}, RESULTS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
