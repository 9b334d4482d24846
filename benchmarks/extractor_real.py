"""Extractor stability and informativeness on REAL images (a second shift beside the demo's rendered contrasts).

The demo's T2/FLAIR are rendered from tissue maps (piecewise-constant signal plus texture), which favours some
descriptors. This benchmark uses real acquisitions that ship with nibabel (a required dependency, so nothing is
downloaded): `example4d.nii.gz` (a real EPI head volume, 128 x 96 x 24 at 2 x 2 x 2.2 mm, two time points) and
`anatomical.nii` (a real T1 of the central brain, 33 x 41 x 25 at 2 mm). Neither is related to the MNI152 template
that the demo data is made from, and neither is used to train any extractor.

Each volume is clipped to its 0.5-99.5 percentiles and scaled to [0, 1]. Tissue classes are intensity classes of
the original image (1-D k-means, 3 classes, inside the head), so they are defined by the ORIGINAL contrast only.
Shifts of one volume (voxel-aligned, so features compare voxel by voxel):

- `original`: the image itself (in-domain reference);
- `repeat` (EPI only): the second real time point (a real re-acquisition: noise and physiology only);
- `remap_a`, `remap_b`: the real image pushed through a piecewise-linear intensity curve that reorders the three
  tissue classes (dark/mid/bright -> bright/mid/dark and -> dark/bright/mid, like T1 -> T2 and T1 -> FLAIR): the
  real texture, noise and partial volume are kept, only the contrast changes;
- `degraded`: gamma 0.6, a smooth multiplicative bias field, 2x thicker slices and Rician noise.

Measured per extractor: linear CKA (and cosine) between features of `original` and each shift inside the head;
a probe (the 3-layer conv probe of `extractor_quality.py`) trained on the features of the anterior half of the
original image, evaluated (foreground Dice of the 3 classes) on the posterior half of every shift; several seeds.

    python benchmarks/extractor_real.py --weights maskgen/extract/weights/<file>.pt

Appends one record per extractor to benchmarks/results.jsonl (benchmark `extractor_real`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from benchmarks import common  # noqa: E402
from benchmarks.extractor_quality import build_extractors, features_of, probe_dice, standardise  # noqa: E402

CLASSES = 3


def _nibabel_data() -> Path:
    import nibabel

    return Path(nibabel.__file__).resolve().parent / "tests" / "data"


def _to_zyx_unit(volume: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(volume, [0.5, 99.5])
    scaled = np.clip((volume - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return np.ascontiguousarray(scaled.transpose(2, 1, 0)).astype(np.float32)   # (x, y, z) -> store order (z, y, x)


def _head_mask(image: np.ndarray, whole: bool) -> np.ndarray:
    from scipy import ndimage

    if whole:
        return np.ones(image.shape, dtype=bool)
    mask = ndimage.gaussian_filter(image, 1.0) > 0.15
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(mask)


def kmeans_1d(values: np.ndarray, k: int = CLASSES, iters: int = 50) -> np.ndarray:
    """Sorted cluster centres of 1-D values (quantile initialisation, Lloyd iterations)."""
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        assign = np.abs(values[:, None] - centres[None]).argmin(1)
        new = np.array([values[assign == j].mean() if (assign == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def intensity_classes(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels 0 = outside, 1..3 = dark..bright intensity class, centres)."""
    from scipy import ndimage

    centres = kmeans_1d(ndimage.gaussian_filter(image, 0.5)[mask])
    smooth = ndimage.gaussian_filter(image, 0.5)
    labels = np.abs(smooth[..., None] - centres).argmin(-1).astype(np.uint8) + 1
    labels[~mask] = 0
    return labels, centres


def remap(image: np.ndarray, centres: np.ndarray, targets: tuple[float, float, float]) -> np.ndarray:
    """Piecewise-linear intensity curve through (0, 0), (centre_k, target_k), (1, last target): reorders tissues."""
    xs = np.concatenate([[0.0], centres, [1.0]])
    ys = np.concatenate([[0.0], targets, [targets[-1]]])
    order = np.argsort(xs)
    return np.interp(image, xs[order], ys[order]).astype(np.float32)


def degrade(image: np.ndarray, seed: int) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = image ** 0.6
    coarse = rng.standard_normal((3, 3, 3))
    bias = ndimage.zoom(coarse, [s / 3 for s in image.shape], order=3)[: image.shape[0], : image.shape[1], : image.shape[2]]
    out = out * np.exp(0.25 * bias / max(bias.std(), 1e-6))
    out = ndimage.gaussian_filter1d(out, 1.0, axis=0)                        # thicker slices along z
    sigma = 0.03 * float(out.max())
    out = np.sqrt((out + sigma * rng.standard_normal(out.shape)) ** 2 + (sigma * rng.standard_normal(out.shape)) ** 2)
    return (out / out.max()).astype(np.float32)


def real_volumes() -> dict[str, dict[str, np.ndarray]]:
    """name -> {"shifts": {shift: image (1, Z, Y, X)}, "label": (Z, Y, X), "mask": (Z, Y, X)}."""
    import nibabel as nib

    data = _nibabel_data()
    epi = np.asarray(nib.load(str(data / "example4d.nii.gz")).dataobj, dtype=np.float32)
    t1 = np.asarray(nib.load(str(data / "anatomical.nii")).dataobj, dtype=np.float32)
    sources = {"epi": (_to_zyx_unit(epi[..., 0]), _to_zyx_unit(epi[..., 1]), False),
               "t1crop": (_to_zyx_unit(t1), None, True)}
    out = {}
    for name, (image, repeat, whole) in sources.items():
        mask = _head_mask(image, whole)
        label, centres = intensity_classes(image, mask)
        shifts = {"original": image}
        if repeat is not None:
            shifts["repeat"] = repeat
        shifts["remap_a"] = remap(image, centres, (0.9, 0.5, 0.3))      # dark/mid/bright -> bright/mid/dark
        shifts["remap_b"] = remap(image, centres, (0.1, 0.9, 0.5))      # -> dark/bright/mid
        shifts["degraded"] = degrade(image, seed=0)
        out[name] = {"shifts": {k: v[None] for k, v in shifts.items()}, "label": label, "mask": mask}
    return out


def split_halves(feats: np.ndarray, label: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(anterior, posterior) halves along Y of (C, Z, Y, X) features and the (Z, Y, X) label."""
    mid = label.shape[1] // 2
    return ((np.ascontiguousarray(feats[:, :, :mid]), np.ascontiguousarray(label[:, :mid])),
            (np.ascontiguousarray(feats[:, :, mid:]), np.ascontiguousarray(label[:, mid:])))


def evaluate(extractor: object, volumes: dict, seeds: int, steps: int, crop: int, max_voxels: int) -> dict:
    from maskgen.extract.stability import cross_domain_stability

    result: dict[str, dict] = {}
    for vname, vol in volumes.items():
        feats = {s: features_of(extractor, img) for s, img in vol["shifts"].items()}
        stab = {s: cross_domain_stability(feats["original"], f, mask=vol["mask"], max_voxels=max_voxels, seed=0)
                for s, f in feats.items() if s != "original"}
        cases, normed = {}, {}
        for s, f in feats.items():
            (fa, la), (fb, lb) = split_halves(standardise(f), vol["label"])
            if s == "original":
                cases["train"] = {"label": la, "split": "train", "domain": "t1"}
                normed["train"] = fa
            cases[s] = {"label": lb, "split": "test", "domain": s}
            normed[s] = fb
        runs = [probe_dice(cases, normed, CLASSES + 1, seed, steps, min(crop, *vol["label"].shape)) for seed in range(seeds)]
        result[vname] = {
            "cka": {s: round(float(v["cka"]), 4) for s, v in stab.items()},
            "cosine": {s: round(float(v.get("cosine", float("nan"))), 4) for s, v in stab.items()},
            "probe_dice": {s: round(float(np.mean([r[s] for r in runs])), 4) for s in runs[0]},
            "probe_dice_se": {s: round(float(np.std([r[s] for r in runs], ddof=1) / np.sqrt(len(runs))), 4)
                              if len(runs) > 1 else None for s in runs[0]},
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="maskgen-pretrained weights (maskgen pretrain)")
    parser.add_argument("--anatomix-weights", type=Path, default=None, help="public anatomix.pth, if available")
    parser.add_argument("--layer", default="final", choices=("final", "penultimate"),
                        help="feature layer of the pretrained (and untrained) network")
    parser.add_argument("--extractors", default=None, help="comma-separated subset of: image, mind, pretrained, "
                        "untrained, anatomix (default: all available)")
    parser.add_argument("--seeds", type=int, default=3, help="probe seeds")
    parser.add_argument("--steps", type=int, default=300, help="probe training steps")
    parser.add_argument("--crop", type=int, default=32, help="probe training crop edge")
    parser.add_argument("--max-voxels", type=int, default=50000, help="voxels per stability comparison")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.jsonl")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    volumes = real_volumes()
    extractors = build_extractors(args.weights, args.anatomix_weights, args.layer)
    if args.extractors:
        wanted = [e.strip() for e in args.extractors.split(",") if e.strip()]
        unknown = sorted(set(wanted) - set(extractors))
        if unknown:
            parser.error(f"--extractors: {unknown} not available (have {sorted(extractors)})")
        extractors = {k: v for k, v in extractors.items() if k in wanted}
    for name, extractor in extractors.items():
        t0 = time.perf_counter()
        res = evaluate(extractor, volumes, args.seeds, args.steps, args.crop, args.max_voxels)
        line = {"extractor": name, "layer": args.layer, "weights_sha256": getattr(extractor, "weights_sha256", None),
                "probe": {"seeds": args.seeds, "steps": args.steps, "crop": args.crop}, "results": res,
                "seconds": round(time.perf_counter() - t0, 1)}
        summary = "  ".join(
            f"{v}: cka " + "/".join(f"{c:.2f}" for c in r["cka"].values())
            + " dice " + "/".join(f"{d:.2f}" for d in r["probe_dice"].values()) for v, r in res.items())
        common.say(f"{name:>10}  {summary}")
        if args.no_record:
            print(line, flush=True)
        else:
            common.record("extractor_real", line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
