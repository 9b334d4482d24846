"""How stable and how informative feature extractors are on the demo data (train T1; test T1, T2, FLAIR).

For each extractor (raw image, MIND-SSC, a maskgen-pretrained anatomix-style network, the same network
untrained as a control, and the public anatomix weights when given):

1. Cross-domain stability: features of the same test subject imaged as t1 vs t2 and t1 vs flair (voxel-aligned
   by construction of the demo data) compared with `maskgen.extract.stability.cross_domain_stability` inside the
   brain (label > 0): linear CKA, mean voxel cosine and mean matching-channel correlation (same channel count only).
2. Informativeness: one small segmentation probe (3x3x3 conv 16 -> ReLU -> 3x3x3 conv 16 -> ReLU -> 1x1x1 conv),
   trained on the t1 training subjects' features only (random 32^3 crops, MONAI DiceCE, Adam), evaluated with
   MONAI DiceMetric (foreground classes) on every contrast of the test subjects; several seeds.
Features are standardised per volume and channel before the probe, as training does.

    maskgen demo-data --out /tmp/demo-data
    python benchmarks/extractor_quality.py --demo /tmp/demo-data \
        --weights maskgen/extract/weights/maskgen-synth-ngf8.pt

Prints a table and appends one JSON line per extractor to benchmarks/results.jsonl (command, git revision,
machine, torch version, dataset and weights checksums).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.jsonl"
if str(HERE.parent) not in sys.path:  # `python benchmarks/extractor_quality.py` as well as `python -m benchmarks ...`
    sys.path.insert(0, str(HERE.parent))

from benchmarks import common as provenance  # noqa: E402  (command, git rev, machine, versions: shared format)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_demo(root: Path, splits: tuple[str, ...] = ("train", "test")) -> dict[str, dict]:
    """case_id -> {image (1,Z,Y,X), label (Z,Y,X), domain, split, subject} of the cases in `splits`, preprocessed
    by the demo pipeline."""
    from maskgen.data.layouts import discover_cases
    from maskgen.data.pipeline import load_pipeline
    from maskgen.data.preprocess import preprocess_case

    pipeline = load_pipeline("demo")
    cases = {}
    for case in discover_cases(pipeline, root):
        if case.split not in splits:
            continue
        pre = preprocess_case(case, pipeline)
        cases[case.case_id] = {"image": pre.image, "label": pre.label, "domain": case.domain, "split": case.split,
                               "subject": case.subject_id}
    return cases


class ImageIdentity:
    """The raw image as a one-channel 'feature' (the baseline)."""

    name = "image"


def build_extractors(weights: Path | None, anatomix_weights: Path | None, layer: str = "final") -> dict[str, object]:
    from maskgen.extract.anatomix import AnatomixExtractor
    from maskgen.extract.registry import build_extractor
    from maskgen.extract.weights import load_anatomix_net, read_checkpoint

    extractors: dict[str, object] = {"image": ImageIdentity(), "mind": build_extractor("mind")}
    if weights is not None:
        extractors["pretrained"] = build_extractor("anatomix", weights=str(weights), layer=layer, allow_download=False)
        _, arch = read_checkpoint(weights)
        from maskgen.extract.anatomix import AnatomixUNet

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = AnatomixUNet(**(arch or load_anatomix_net(weights).arch())).eval()
        extractors["untrained"] = AnatomixExtractor(net, layer=layer, name="untrained-control")
    if anatomix_weights is not None:
        extractors["anatomix"] = build_extractor("anatomix", weights=str(anatomix_weights), allow_download=False)
    return extractors


def features_of(extractor: object, image: np.ndarray) -> np.ndarray:
    from maskgen.extract.inference import extract_volume

    if isinstance(extractor, ImageIdentity):
        return image.astype(np.float32)
    return extract_volume(extractor, image)


def standardise(feat: np.ndarray) -> np.ndarray:
    mean = feat.mean(axis=(1, 2, 3), keepdims=True)
    std = feat.std(axis=(1, 2, 3), keepdims=True)
    return ((feat - mean) / np.where(std > 1e-8, std, 1.0)).astype(np.float32)


def content_free_control(image: np.ndarray, label: np.ndarray, seed: int = 0) -> np.ndarray:
    """A (1, Z, Y, X) image with the subject's head outline but no anatomy: smooth noise inside the dilated brain mask.

    Features that are as similar between t1 and this control as between t1 and t2 encode the outline (or the
    position in the volume), not the tissue: CKA t1-vs-control is the floor that t1-vs-t2 should be read against."""
    from scipy import ndimage

    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(label.shape), 2.0)
    noise = (noise - noise.min()) / max(float(noise.max() - noise.min()), 1e-8)
    head = ndimage.binary_dilation(label > 0, iterations=3)
    return np.where(head, noise, 0.0)[None].astype(image.dtype)


def stability(cases: dict, feats: dict, max_voxels: int, controls: dict | None = None) -> dict[str, dict[str, float]]:
    """CKA / cosine / channel correlation inside the brain of each test subject's t1 vs its t2, flair and (given
    `controls`: t1 case id -> features of `content_free_control`) the content-free control."""
    from maskgen.extract.stability import cross_domain_stability

    by_subject: dict[str, dict[str, str]] = {}
    for cid, c in cases.items():
        if c["split"] == "test":
            by_subject.setdefault(c["subject"], {})[c["domain"]] = cid
    out: dict[str, dict[str, float]] = {}
    for other in ("t2", "flair"):
        rows = []
        for subject, doms in sorted(by_subject.items()):
            if "t1" not in doms or other not in doms:
                continue
            a, b = doms["t1"], doms[other]
            if feats[a].shape != feats[b].shape:
                raise RuntimeError(f"{a} and {b} are not on one grid: {feats[a].shape} vs {feats[b].shape}")
            mask = cases[a]["label"] > 0
            rows.append(cross_domain_stability(feats[a], feats[b], mask=mask, max_voxels=max_voxels, seed=0))
        out[f"t1_vs_{other}"] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "voxels"}
        out[f"t1_vs_{other}"]["subjects"] = len(rows)
    if controls:
        rows = [cross_domain_stability(feats[cid], f, mask=cases[cid]["label"] > 0, max_voxels=max_voxels, seed=0)
                for cid, f in sorted(controls.items())]
        out["t1_vs_control"] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "voxels"}
        out["t1_vs_control"]["subjects"] = len(rows)
    return out


def _probe(in_channels: int, num_classes: int, width: int = 16) -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv3d(width, width, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv3d(width, num_classes, 1),
    )


def probe_dice(cases: dict, feats: dict, num_classes: int, seed: int, steps: int, crop: int) -> dict[str, float]:
    """Train the probe on t1 training features, return mean foreground Dice per test contrast."""
    from monai.losses import DiceCELoss
    from monai.metrics import DiceMetric

    train_ids = sorted(c for c, v in cases.items() if v["split"] == "train" and v["domain"] == "t1")
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _probe(feats[train_ids[0]].shape[0], num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    model.train()
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(2):
            cid = train_ids[rng.integers(len(train_ids))]
            f, lab = feats[cid], cases[cid]["label"]
            start = [int(rng.integers(0, max(1, s - crop + 1))) for s in lab.shape]
            sl = tuple(slice(s, s + crop) for s in start)
            xs.append(torch.from_numpy(f[(slice(None), *sl)]))
            ys.append(torch.from_numpy(lab[sl].astype(np.int64))[None])
        logits = model(torch.stack(xs))
        loss = loss_fn(logits, torch.stack(ys))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    per_domain: dict[str, list[float]] = {}
    with torch.inference_mode():
        for cid, c in sorted(cases.items()):
            if c["split"] != "test":
                continue
            pred = model(torch.from_numpy(feats[cid])[None]).argmax(1)
            metric = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)
            onehot = lambda t: torch.nn.functional.one_hot(t, num_classes).permute(0, 4, 1, 2, 3)  # noqa: E731
            metric(onehot(pred), onehot(torch.from_numpy(c["label"].astype(np.int64))[None]))
            per_domain.setdefault(c["domain"], []).append(float(metric.aggregate()))
    return {d: float(np.mean(v)) for d, v in sorted(per_domain.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="folder written by `maskgen demo-data`")
    parser.add_argument("--weights", type=Path, default=None, help="maskgen-pretrained weights (maskgen pretrain)")
    parser.add_argument("--anatomix-weights", type=Path, default=None, help="public anatomix.pth, if available")
    parser.add_argument("--seeds", type=int, default=3, help="probe seeds")
    parser.add_argument("--steps", type=int, default=300, help="probe training steps")
    parser.add_argument("--crop", type=int, default=32, help="probe training crop edge")
    parser.add_argument("--max-voxels", type=int, default=50000, help="voxels per stability comparison")
    parser.add_argument("--layer", default="final", choices=("final", "penultimate"),
                        help="feature layer of the pretrained (and untrained) network")
    parser.add_argument("--extractors", default=None, help="comma-separated subset of: image, mind, pretrained, "
                        "untrained, anatomix (default: all available)")
    parser.add_argument("--no-probe", action="store_true", help="stability only (no probe training; only the test "
                        "subjects are extracted)")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.jsonl")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    t0 = time.perf_counter()
    cases = load_demo(args.demo)
    num_classes = int(max(int(c["label"].max()) for c in cases.values())) + 1
    extractors = build_extractors(args.weights, args.anatomix_weights, args.layer)
    if args.extractors:
        wanted = [e.strip() for e in args.extractors.split(",") if e.strip()]
        unknown = sorted(set(wanted) - set(extractors))
        if unknown:
            parser.error(f"--extractors: {unknown} not available (have {sorted(extractors)})")
        extractors = {k: v for k, v in extractors.items() if k in wanted}
    common = {
        "benchmark": "extractor_quality",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "git_rev": provenance.git_rev(),
        "machine": {**provenance.machine(), "threads": torch.get_num_threads()},
        "versions": provenance.versions(),
        "dataset": {"path": str(args.demo), "dataset_json_sha256": _sha256(args.demo / "dataset.json"),
                    "cases": len(cases)},
        "probe": {"seeds": 0 if args.no_probe else args.seeds, "steps": args.steps, "crop": args.crop},
        "layer": args.layer,
    }
    rows = []
    for name, extractor in extractors.items():
        t = time.perf_counter()
        needed = {cid: c for cid, c in cases.items() if not args.no_probe or c["split"] == "test"}   # stability: test only
        feats = {cid: features_of(extractor, c["image"]) for cid, c in needed.items()}
        extract_s = time.perf_counter() - t
        controls = {cid: features_of(extractor, content_free_control(c["image"], c["label"]))
                    for cid, c in cases.items() if c["split"] == "test" and c["domain"] == "t1"}
        stab = stability(cases, feats, args.max_voxels, controls)
        normed = {cid: standardise(f) for cid, f in feats.items()}
        seeds = 0 if args.no_probe else args.seeds
        dice_runs = [probe_dice(cases, normed, num_classes, seed, args.steps, args.crop) for seed in range(seeds)]
        dice = {d: float(np.mean([r[d] for r in dice_runs])) for d in (dice_runs[0] if dice_runs else {})}
        dice_sd = {d: float(np.std([r[d] for r in dice_runs])) for d in (dice_runs[0] if dice_runs else {})}
        dice_se = {d: float(np.std([r[d] for r in dice_runs], ddof=1) / np.sqrt(len(dice_runs)))
                   for d in (dice_runs[0] if len(dice_runs) > 1 else {})}
        record = {
            **common, "extractor": name, "channels": int(next(iter(feats.values())).shape[0]),
            "weights_sha256": getattr(extractor, "weights_sha256", None),
            "stability": stab, "probe_dice": dice, "probe_dice_sd_over_seeds": dice_sd, "probe_dice_se": dice_se,
            "extract_s": round(extract_s, 2),
        }
        rows.append(record)
        print(f"{name:>10}  C={record['channels']:>2}  "
              + "  ".join(f"{k}: cka {v['cka']:.3f} cos {v.get('cosine', float('nan')):.3f}" for k, v in stab.items())
              + "  | dice " + "  ".join(f"{d} {dice[d]:.3f}" for d in dice), flush=True)
    if not args.no_record:
        with RESULTS.open("a") as f:
            for record in rows:
                record["total_s"] = round(time.perf_counter() - t0, 1)
                f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
