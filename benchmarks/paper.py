"""Paper-size benchmark, prepared for one GPU (issue 16.5): everything a 250k-step AMOS run costs, in one run.

    python -m benchmarks paper --device cuda                          # H200: under 8 minutes (--budget-s)
    python -m benchmarks paper --device cuda --weights anatomix.pth   # the real extractor instead of random weights
    python -m benchmarks paper --tiny                                 # CPU, tiny sizes (what the test runs)

Sizes (paper 3.2, C.1, Table 16): maskgen's default UNet (the public code's, 36.9M parameters at width 20, depth
5), 128^3 crops, batch 2 and 4, bf16 autocast on CUDA, the anatomix architecture (random weights unless
`--weights`), and a synthetic AMOS-sized CT: 512x512x400 voxels at 0.8 mm, resampled by maskgen to 1x1x1.5 mm
(410x410x213), 15 organ classes. Everything runs through maskgen's own code: `run_extract`, `preprocess_case`,
`extract_volume`, `train_step` and the train loop's model/optimiser set-up, `make_loader`, `train()`,
`evaluate_run`, `predict_files`.

Parts, each isolated (an error is recorded and the next part runs; a part whose input is missing says so):
- `extraction`: `maskgen extract` of the synthetic CT (one case first, the start-up; then the others: seconds per
  case) and, on one case, the split into preprocessing and the extractor (`extract_volume`); writes the store the
  other parts use.
- `train_step`: ERM / cached MaskGen / online MaskGen (anatomix run on every crop), one optimisation step on
  ready batches, interleaved (the paper's Table 13: online +25.8% over ERM), at each batch size; peak GPU memory
  of each.
- `loader`: crops/s of the real DataLoader at the crop size with the default number of workers, against the crops/s
  the cached step consumes (headroom < 1: the loader bounds training); per-crop store read / augmentation.
- `inference`: seconds per case of `evaluate_run` (features from the store) and `predict_files` (NIfTI in, with
  the extractor) for ERM and MaskGen, case by case in lockstep (paper Table 14: +8%), and the extractor's share.
- `estimate`: wall time of a 250k-step run from the parts above (step time or loader, whichever bounds, plus
  validation every `val_every` steps on `--val-cases` cases).

The measuring loops stop at their share of `--budget-s`; a watchdog prints and records what was measured and exits
if the whole run passes `--hard-limit-s`. The report is one record in `results.jsonl` and a table printed last.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from benchmarks import inference as inf
from benchmarks import train_step as ts

PAPER_ONLINE_OVERHEAD_PCT = 25.8     # Table 13: MaskGen (features computed on the fly) over ERM, training
PAPER_INFERENCE_OVERHEAD_PCT = 8.0   # Table 14
PAPER_STEPS = 250_000                # 4.1: "all-data" models
AMOS_VAL_CASES = 30                  # Table 16
PARTS = ("extraction", "train_step", "loader", "inference", "estimate")
#: Share of the budget left when a part starts that its measuring loops may use.
BUDGET_SHARE = {"extraction": 1.0, "train_step": 0.4, "loader": 0.25, "inference": 0.9, "estimate": 1.0}
VARIANTS = ts.VARIANTS               # erm, cached, online


@dataclass(frozen=True)
class Sizes:
    ct_shape_xyz: tuple[int, int, int] = (512, 512, 400)
    ct_spacing_mm: float = 0.8
    spacing_xyz: tuple[float, float, float] = (1.0, 1.0, 1.5)    # AMOS, Table 16
    crop: int = 128
    batches: tuple[int, ...] = (2, 4)
    cases: int = 3                    # extracted cases (the first one is the start-up)
    channels: int | None = None       # UNet width (None: maskgen's default)
    depth: int | None = None
    anatomix: dict[str, Any] | None = None   # random-weights extractor architecture (None: the public checkpoint's)
    repeats: int = 8                  # timed rounds of the step comparison (fewer when the budget runs out)
    warmup: int = 2                   # untimed rounds (after one step of each variant that reads its peak memory)
    n_batches: int = 2                # distinct ready batches cycled through
    predict_files: int = 2            # NIfTI files of the predict measurement (the first is the start-up)
    loader_batches: int = 200         # batches taken from the loader at most (fewer when the budget ends)
    inference_rounds: int = 10        # lockstep rounds of each inference measurement (fewer when the budget ends)
    overlap: float = 0.5


TINY = Sizes(ct_shape_xyz=(40, 40, 32), crop=16, batches=(1, 2), channels=4, depth=2,
             anatomix={"output_nc": 4, "ngf": 4, "num_downs": 2}, repeats=2, warmup=0, loader_batches=8,
             inference_rounds=1)


@dataclass
class Bench:
    """What the parts share: options, sizes, device, the data and store made by `extraction`, results so far."""

    args: argparse.Namespace
    sizes: Sizes
    started: float
    report: dict[str, Any] = field(default_factory=dict)
    data_root: Path | None = None
    toml: Path | None = None
    store: Path | None = None

    @property
    def workdir(self) -> Path:
        return Path(self.args.workdir)

    @property
    def cuda(self) -> bool:
        return self.args.device == "cuda"

    def deadline(self, part: str) -> float:
        end = self.started + self.args.budget_s
        now = time.monotonic()
        return now + BUDGET_SHARE[part] * max(0.0, end - now)

    def result(self, part: str) -> dict[str, Any] | None:
        out = self.report.get(part)
        return out if out and out.get("status") == "ok" else None


# -- synthetic AMOS-sized CT ------------------------------------------------------------------------------------------
def synthetic_ct(shape_xyz: tuple[int, int, int], spacing_mm: float, seed: int = 0) -> tuple[Any, Any, Any]:
    """(HU int16, label uint8 0..15, affine) of an abdomen-like CT: air, a body ellipse, 15 ellipsoid organs, noise.

    The affine is LPS-like (x and y flipped) so that maskgen reorients it, as it does real CT."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sx, sy, sz = shape_xyz
    hu = np.full(shape_xyz, -1000, dtype=np.int16)
    label = np.zeros(shape_xyz, dtype=np.uint8)
    x = (np.arange(sx, dtype=np.float32) - sx / 2) / (0.42 * sx)
    y = (np.arange(sy, dtype=np.float32) - sy / 2) / (0.32 * sy)
    body = (x[:, None] ** 2 + y[None, :] ** 2) <= 1.0
    hu[body] = 40
    for k in range(1, 16):
        c = rng.uniform([0.3, 0.35, 0.15], [0.7, 0.65, 0.85]) * shape_xyz
        r = np.maximum(rng.uniform(0.04, 0.12, 3) * shape_xyz, 2.0)
        lo = np.maximum(np.floor(c - r).astype(int), 0)
        hi = np.minimum(np.ceil(c + r).astype(int) + 1, shape_xyz)
        g = [((np.arange(a, b, dtype=np.float32) - ci) / ri) ** 2 for a, b, ci, ri in zip(lo, hi, c, r)]
        inside = (g[0][:, None, None] + g[1][None, :, None] + g[2][None, None, :]) <= 1.0
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        label[box][inside] = k
        hu[box][inside] = int(rng.integers(-80, 260))
    noise = rng.standard_normal(shape_xyz, dtype=np.float32) * 25.0
    hu = np.clip(hu + noise, -1024, 3071).astype(np.int16)
    affine = np.diag([-spacing_mm, -spacing_mm, spacing_mm, 1.0])
    return hu, label, affine


def write_dataset(folder: Path, sizes: Sizes, seed: int) -> tuple[Path, Path]:
    """The synthetic CT and its label as NIfTI (gzip, as AMOS ships), and a pipeline TOML (AMOS spacing, CT window,
    the crop) next to them; the case list is written by `write_case_list`."""
    import nibabel as nib

    from maskgen.data.pipeline import load_pipeline

    folder.mkdir(parents=True, exist_ok=True)
    hu, label, affine = synthetic_ct(sizes.ct_shape_xyz, sizes.ct_spacing_mm, seed)
    image_path, label_path = folder / "ct_0000.nii.gz", folder / "ct_label.nii.gz"
    nib.save(nib.Nifti1Image(hu, affine), image_path)
    nib.save(nib.Nifti1Image(label, affine), label_path)
    classes = ", ".join(f'"{c}"' for c in load_pipeline("amos").classes)
    toml = folder / "paper-bench.toml"
    toml.write_text(
        'name = "paper-bench"\ndescription = "benchmarks/paper.py: a synthetic AMOS-sized CT"\n'
        f"spacing = {list(sizes.spacing_xyz)}\ncrop_size = {[sizes.crop] * 3}\nnormalization = \"ct\"\n"
        f"classes = [{classes}]\nallow_flips = false\n\n[layout]\nkind = \"csv\"\ncsv = \"dataset.csv\"\n"
    )
    return toml, image_path


def write_case_list(folder: Path, cases: int) -> None:
    """`cases` cases of the one synthetic CT (same file, distinct case ids), all in the train split."""
    rows = ["case,image,label,split,domain"] + [f"ct{k},ct_0000.nii.gz,ct_label.nii.gz,train,ct" for k in range(cases)]
    (folder / "dataset.csv").write_text("\n".join(rows) + "\n")


def extractor_weights(args: argparse.Namespace, sizes: Sizes) -> str:
    """The anatomix checkpoint the bench uses: `--weights`, else random weights of the sizes' architecture."""
    if args.weights:
        return str(args.weights)
    from maskgen.extract.anatomix import AnatomixUNet
    from maskgen.extract.weights import save_anatomix_checkpoint

    arch = sizes.anatomix or {}
    name = "anatomix-random-" + ("-".join(f"{k}{v}" for k, v in sorted(arch.items())) or "default") + ".pt"
    path = Path(args.workdir) / name
    if not path.is_file():
        with common.fork_rng(0):
            save_anatomix_checkpoint(AnatomixUNet(**arch), path)
    return str(path)


# -- parts --------------------------------------------------------------------------------------------------------
def part_extraction(b: Bench) -> dict[str, Any]:
    from maskgen.extract.run import ExtractConfig, run_extract

    data = b.workdir / "paper-data"
    shutil.rmtree(data, ignore_errors=True)
    t_synth, (b.toml, image) = common.timed(lambda: write_dataset(data, b.sizes, b.args.seed))
    b.data_root = data
    store = b.workdir / "paper.zarr"
    shutil.rmtree(store, ignore_errors=True)
    cfg = ExtractConfig(dataset=str(b.toml), data_root=str(data), out=str(store), extractor="anatomix",
                        weights=b.args.weights, device=b.args.device, workers=1, allow_download=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_case_list(data, 1)
        t_first, _ = common.timed(lambda: run_extract(cfg, progress=False), b.args.device)
        write_case_list(data, b.sizes.cases)
        t_rest, summary = common.timed(lambda: run_extract(cfg, progress=False), b.args.device)
    b.store = store
    n = max(1, summary.cases_written)
    per_case = t_rest / n
    out = {"synthetic_ct_s": t_synth, "input_bytes": image.stat().st_size, "first_case_s": t_first,
           "timed_cases": summary.cases_written, "per_case_s": per_case, "gb_written_per_case": summary.gb_written / n,
           "bytes_per_voxel": summary.bytes_per_voxel, "write_mb_per_s": 1000 * summary.gb_written / n / per_case}
    out.update(extraction_split(b, per_case))
    return out


def extraction_split(b: Bench, per_case: float) -> dict[str, Any]:
    """On the first case: preprocessing (NIfTI read, reorientation, resampling, CT window; timed once) and
    `extract_volume` (the extractor on the whole resampled volume, sliding windows above its size threshold; the
    median of two)."""
    from maskgen.data.layouts import discover_cases
    from maskgen.data.pipeline import load_pipeline
    from maskgen.data.preprocess import preprocess_case
    from maskgen.extract.inference import extract_volume
    from maskgen.extract.registry import build_extractor

    pipeline = load_pipeline(str(b.toml))
    case = discover_cases(pipeline, str(b.data_root))[0]
    pre_s, pre = common.timed(lambda: preprocess_case(case, pipeline))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extractor = build_extractor("anatomix", b.args.weights, None, b.args.device, allow_download=False)
    t_ext = [common.timed(lambda: extract_volume(extractor, pre.image, device=b.args.device), b.args.device)[0]
             for _ in range(2)]
    ext_s = statistics.median(t_ext)
    return {"resampled_shape_zyx": list(pre.image.shape[1:]), "preprocess_s": pre_s, "extract_volume_s": ext_s,
            "write_and_rest_s": per_case - pre_s - ext_s,
            "overhead_over_extract_volume_pct": 100 * (per_case / ext_s - 1)}


def base_config(b: Bench, batch: int, **changes: Any) -> Any:
    from maskgen.train.config import TrainConfig

    model = {k: v for k, v in (("channels", b.sizes.channels), ("depth", b.sizes.depth)) if v is not None}
    cfg = TrainConfig(features=str(b.store), out=str(b.workdir / "paper-run"), batch_size=batch,
                      crop_zyx=(b.sizes.crop,) * 3, device=b.args.device, seed=b.args.seed, steps=PAPER_STEPS,
                      num_workers=b.args.num_workers, extractor_weights=b.args.weights, **model)
    return cfg.replace(**changes) if changes else cfg


def _needs_store(b: Bench) -> Any:
    if b.store is None:
        raise RuntimeError("no store: the extraction part did not finish (see its error)")
    from maskgen.store.reader import FeatureStore

    return FeatureStore(b.store)


def part_train_step(b: Bench) -> dict[str, Any]:
    store = _needs_store(b)
    deadline = b.deadline("train_step")
    out: dict[str, Any] = {"per_batch": {}}
    for i, batch in enumerate(b.sizes.batches):
        share = (deadline - time.monotonic()) / (len(b.sizes.batches) - i)
        try:
            out["per_batch"][str(batch)] = step_comparison(b, store, batch, time.monotonic() + share)
        except Exception as e:  # an out-of-memory at batch 4 must not lose batch 2
            out["per_batch"][str(batch)] = {"status": "failed", "error": _error(e)}
        finally:
            _free(b)
    if not any(r.get("status") == "ok" for r in out["per_batch"].values()):
        raise RuntimeError("every batch size failed: " + "; ".join(r["error"] for r in out["per_batch"].values()))
    return out


def step_comparison(b: Bench, store: Any, batch: int, deadline: float) -> dict[str, Any]:
    """`train_step` of the three variants on the same ready batches, rounds interleaved until `deadline`."""
    base = base_config(b, batch)
    trainers = {n: ts.build_trainer(n, ts.variant_config(n, base, b.args.mask_rate), store) for n in VARIANTS}
    first = trainers["cached"]
    ready = first.batches(0, b.sizes.n_batches)
    plain = [{k: v for k, v in x.items() if k != "features"} for x in ready]
    data = {"erm": plain, "cached": ready, "online": plain}
    peak = {n: _peak_gb(lambda t=t, n=n: t.step(data[n][0], 0), b.cuda) for n, t in trainers.items()}
    fns = {n: (lambda r, t=t, n=n: t.step(data[n][r % len(data[n])], r)) for n, t in trainers.items()}
    times = common.interleaved(fns, b.sizes.repeats, b.sizes.warmup, first.device, deadline=deadline)
    from maskgen.train.unet import count_parameters

    result: dict[str, Any] = {"status": "ok", "crop_zyx": list(first.cfg.crop_zyx), "aug_device": first.aug_device,
                              "unet_parameters": {n: count_parameters(t.model) for n, t in trainers.items()},
                              "peak_gpu_gb": peak, "step": {n: common.stats(v) for n, v in times.items()}}
    for n in ("cached", "online"):
        result["step"][n]["overhead_vs_erm_pct"] = 100 * (common.paired_ratio(times[n], times["erm"]) - 1)
    result["online_vs_cached_pct"] = 100 * (common.paired_ratio(times["online"], times["cached"]) - 1)
    return result


def part_loader(b: Bench) -> dict[str, Any]:
    """Crops/s of `make_loader` (cached MaskGen batches: image + features + label) at the largest batch size, with
    maskgen's default number of workers, until the part's deadline; per-crop costs in one process."""
    from benchmarks import loader as ld
    from maskgen.train.loader import make_loader
    from maskgen.train.placement import resolve_aug_device, resolve_device, resolve_num_workers
    from maskgen.train.setup import loader_spec, resolve_config

    store = _needs_store(b)
    deadline = b.deadline("loader")
    batch = max(b.sizes.batches)
    cfg = resolve_config(ts.variant_config("cached", base_config(b, batch), b.args.mask_rate), store)
    device = resolve_device(cfg.device)
    spec = loader_spec(cfg, bool(store.pipeline.allow_flips), resolve_aug_device(cfg.aug_device, device))
    workers = resolve_num_workers(cfg.num_workers, device)
    rate = loader_throughput(lambda: make_loader(store, spec, 1000, 10**6, workers, pin_memory=device.type == "cuda"),
                             batch, workers, deadline, b.sizes.loader_batches)
    out = {"batch": batch, "crop_zyx": list(cfg.crop_zyx), "num_workers": workers,
           "spatial_augmentation": "workers" if spec.spatial_on_cpu else "device", "loader": rate,
           "store_backend": getattr(store, "backend", None),
           "per_crop_ms": ld.breakdown(SimpleNamespace(store=store, spec=spec), 3000, 4)}
    step = _cached_step_s(b, batch)
    if step is not None:
        need = batch / step
        out.update(step_consumes_crops_per_s=need, headroom=rate["crops_per_s"] / need)
    return out


def loader_throughput(make: Callable[[], Any], batch: int, workers: int, deadline: float, max_batches: int,
                      min_batches: int = 6) -> dict[str, Any]:
    """Steady crops/s of a DataLoader: batches are taken until `deadline` (at least `min_batches`, at most
    `max_batches` after the first); the first batch (worker start-up) and the workers' prefetched backlog (2 per worker, at most half of the
    batches) are not counted."""
    t0 = time.perf_counter()
    it = iter(make())
    next(it)
    first = time.perf_counter() - t0
    stamps = [time.perf_counter()]
    for _ in it:
        stamps.append(time.perf_counter())
        if len(stamps) > max_batches or (len(stamps) > min_batches and time.monotonic() > deadline):
            break
    del it
    skip = min(len(stamps) // 2, 2 * workers)
    kept = stamps[skip:]
    return {"crops_per_s": (len(kept) - 1) * batch / (kept[-1] - kept[0]), "first_batch_s": first,
            "batches": len(stamps), "timed_batches": len(kept) - 1, "num_workers": workers}


def _cached_step_s(b: Bench, batch: int) -> float | None:
    r = (b.result("train_step") or {}).get("per_batch", {}).get(str(batch), {})
    return r["step"]["cached"]["median_s"] if r.get("status") == "ok" else None


def part_inference(b: Bench) -> dict[str, Any]:
    """ERM and MaskGen runs of one training step (`train()`), then `evaluate_run` on the store's cases and
    `predict_files` on copies of the CT, case by case in lockstep, rounds until the part's deadline."""
    from maskgen.train.loop import train

    _needs_store(b)
    deadline = b.deadline("inference")
    runs = {}
    for name, variant in (("erm", "erm"), ("maskgen", "cached")):
        one_step = base_config(b, max(b.sizes.batches), steps=1, val_every=0, num_workers=0)  # no worker start-up
        cfg = ts.variant_config(variant, one_step, b.args.mask_rate)
        runs[name] = train(cfg.replace(out=str(b.workdir / f"paper-{name}")), overwrite=True, progress=False)
    common_args = {"split": "train", "overlap": b.sizes.overlap, "device": b.args.device, "workdir": b.workdir,
                   "rounds": b.sizes.inference_rounds}
    out: dict[str, Any] = {"evaluate": inf.measure(
        "evaluate", runs, deadline=time.monotonic() + 0.6 * (deadline - time.monotonic()), **common_args)}
    inputs = b.workdir / "paper-predict-inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir(parents=True)
    for k in range(b.sizes.predict_files):
        (inputs / f"ct{k}_0000.nii.gz").symlink_to((b.data_root / "ct_0000.nii.gz").resolve())
    out["predict"] = inf.measure("predict", runs, inputs=inputs, weights=b.args.weights, deadline=deadline,
                                 **common_args)
    extraction = b.result("extraction")
    if extraction:  # the extractor's share of MaskGen's predict time (the paper's +8% includes the extractor)
        ext = extraction["extract_volume_s"]
        out["predict"]["extractor_s"] = ext
        out["predict"]["extractor_share_of_maskgen_pct"] = 100 * ext / out["predict"]["per_case"]["maskgen"]["median_s"]
    shutil.rmtree(inputs, ignore_errors=True)
    for p in runs.values():
        shutil.rmtree(p, ignore_errors=True)
    return out


def part_estimate(b: Bench) -> dict[str, Any]:
    """Hours of a `--steps` run per batch size and variant: steps x max(step time, batch / loader crops/s) +
    (steps / val_every) x val cases x inference per case (`evaluate_run`, MaskGen)."""
    from maskgen.train.config import TrainConfig

    train = b.result("train_step")
    if train is None:
        raise RuntimeError("no step times: the train_step part did not finish (see its error)")
    loader = b.result("loader")
    crops_per_s = loader["loader"]["crops_per_s"] if loader else None
    inference = b.result("inference")
    infer_s = inference["evaluate"]["per_case"]["maskgen"]["median_s"] if inference else None
    val_every = TrainConfig.__dataclass_fields__["val_every"].default
    validations = b.args.steps // val_every if val_every else 1
    val_h = validations * b.args.val_cases * infer_s / 3600 if infer_s is not None else None
    out: dict[str, Any] = {"steps": b.args.steps, "val_every": val_every, "val_cases": b.args.val_cases,
                           "validation_hours": val_h, "loader_crops_per_s": crops_per_s, "per_batch": {}}
    for batch, r in train["per_batch"].items():
        if r.get("status") != "ok":
            continue
        rows = {}
        for n in VARIANTS:
            step = r["step"][n]["median_s"]
            data = int(batch) / crops_per_s if crops_per_s and n != "erm" else None
            bound = max(step, data or 0.0)
            rows[n] = {"step_s": step, "loader_s_per_batch": data, "bound_by": "loader" if bound > step else "step",
                       "train_hours": b.args.steps * bound / 3600,
                       "total_hours": b.args.steps * bound / 3600 + (val_h or 0.0)}
        out["per_batch"][batch] = rows
    out["note"] = ("ERM's loader bound is not measured (its batches carry no features); validation is excluded "
                   "from total_hours when the inference part did not finish" if val_h is None else
                   "ERM's loader bound is not measured (its batches carry no features)")
    return out


PART_FUNCTIONS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "extraction": part_extraction, "train_step": part_train_step, "loader": part_loader,
    "inference": part_inference, "estimate": part_estimate,
}


# -- running the parts ----------------------------------------------------------------------------------------------
def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _free(b: Bench) -> None:
    import gc

    gc.collect()
    if b.cuda:
        import torch

        torch.cuda.empty_cache()


_PEAK_SEEN = [0]  # the highest peak (bytes) read before a reset: a part's peak survives the resets of its steps


def _peak_gb(fn: Callable[[], Any], cuda: bool) -> float | None:
    """Peak GPU memory (GB) allocated while `fn` runs (None on the CPU); `fn` runs either way. Nested calls work:
    the peak before each reset is kept in `_PEAK_SEEN`, so an outer call reports the highest of all."""
    if not cuda:
        fn()
        return None
    import torch

    torch.cuda.synchronize()
    outer = _PEAK_SEEN[0] = max(_PEAK_SEEN[0], torch.cuda.max_memory_allocated())
    torch.cuda.reset_peak_memory_stats()
    _PEAK_SEEN[0] = 0
    fn()
    torch.cuda.synchronize()
    peak = max(_PEAK_SEEN[0], torch.cuda.max_memory_allocated())
    _PEAK_SEEN[0] = max(outer, peak)
    return peak / 1e9


def run_part(b: Bench, name: str) -> None:
    """Run one part; its result, its error (with the last traceback lines) or "not reached" goes to the report."""
    t0 = time.perf_counter()
    b.report[name] = {"status": "running"}
    try:
        peak: dict[str, Any] = {}
        peak["gb"] = _peak_gb(lambda: peak.update(out=PART_FUNCTIONS[name](b)), b.cuda)
        b.report[name] = {"status": "ok", **peak["out"], "peak_gpu_gb_part": peak["gb"]}
    except Exception as e:
        tb = traceback.format_exc().strip().splitlines()[-6:]
        b.report[name] = {"status": "failed", "error": _error(e), "traceback": tb}
        common.say(f"paper: {name} failed: {_error(e)}")
    finally:
        b.report[name]["seconds"] = time.perf_counter() - t0
        _free(b)


class _Finisher:
    """Records and prints the report once: at the end, or from the watchdog when the hard limit passes."""

    def __init__(self, b: Bench) -> None:
        self.b, self.lock, self.done = b, threading.Lock(), False

    def __call__(self, why: str = "") -> dict[str, Any] | None:
        with self.lock:
            if self.done:
                return None
            self.done = True
            b = self.b
            for name in b.args.parts:
                if b.report.get(name, {}).get("status") in (None, "running"):
                    b.report[name] = {"status": "not finished", "error": why or "not reached"}
            result = {"settings": settings(b), "parts": b.report, "wall_s": time.monotonic() - b.started,
                      "paper": {"online_overhead_pct": PAPER_ONLINE_OVERHEAD_PCT,
                                "inference_overhead_pct": PAPER_INFERENCE_OVERHEAD_PCT}}
            line = common.record("paper", result, b.args.results)
            print(render(b.report, line["wall_s"]), flush=True)
            return line


def _watchdog(finish: _Finisher, limit_s: float) -> threading.Timer:
    def fire() -> None:
        if finish(f"stopped by the watchdog at --hard-limit-s {limit_s:.0f}") is not None:
            os._exit(3)

    timer = threading.Timer(limit_s, fire)
    timer.daemon = True
    timer.start()
    return timer


def settings(b: Bench) -> dict[str, Any]:
    import torch

    s = {k: (list(v) if isinstance(v, tuple) else v) for k, v in b.sizes.__dict__.items()}
    return {**s, "device": b.args.device, "weights": b.args.weights, "random_weights": not b.args.user_weights,
            "budget_s": b.args.budget_s, "torch_threads": torch.get_num_threads(), "bf16_autocast": b.cuda,
            "num_workers": b.args.num_workers, "mask_rate": b.args.mask_rate, "parts": list(b.args.parts)}


# -- the report -------------------------------------------------------------------------------------------------
def _f(v: Any, fmt: str = ".3f", unit: str = "") -> str:
    return "-" if v is None else f"{v:{fmt}}{unit}"


def render(report: dict[str, Any], wall_s: float) -> str:
    """The report as a short text table (printed last; the JSON record holds everything)."""
    lines = [f"== paper-size benchmark ({wall_s:.0f} s)"]
    for name, r in report.items():
        head = f"[{name}] {r.get('status')} ({_f(r.get('seconds'), '.0f', ' s')})"
        lines.append(head + (f": {r['error']}" if r.get("error") else ""))
        if r.get("status") == "ok":
            lines += ["  " + t for t in _RENDER[name](r)]
    return "\n".join(lines)


def _render_extraction(r: dict[str, Any]) -> list[str]:
    return [f"per case {_f(r['per_case_s'])} s over {r['timed_cases']} cases (first {_f(r['first_case_s'])} s), "
            f"resampled zyx {r['resampled_shape_zyx']}, {_f(r['gb_written_per_case'])} GB/case written "
            f"({_f(r['write_mb_per_s'], '.0f')} MB/s)",
            f"preprocess {_f(r['preprocess_s'])} s, extract_volume {_f(r['extract_volume_s'])} s, write+rest "
            f"{_f(r['write_and_rest_s'])} s; over extract_volume {_f(r['overhead_over_extract_volume_pct'], '+.1f')}%"]


def _render_train(r: dict[str, Any]) -> list[str]:
    out = []
    for batch, x in r["per_batch"].items():
        if x.get("status") != "ok":
            out.append(f"batch {batch}: {x.get('status')}: {x.get('error')}")
            continue
        s, p = x["step"], x["peak_gpu_gb"]
        out.append(f"batch {batch}: step s ERM {_f(s['erm']['median_s'])} / cached {_f(s['cached']['median_s'])} "
                   f"({_f(s['cached']['overhead_vs_erm_pct'], '+.1f')}%) / online {_f(s['online']['median_s'])} "
                   f"({_f(s['online']['overhead_vs_erm_pct'], '+.1f')}%; paper +{PAPER_ONLINE_OVERHEAD_PCT}%), "
                   f"n={s['erm']['n']}; peak GB {_f(p['erm'], '.1f')}/{_f(p['cached'], '.1f')}/"
                   f"{_f(p['online'], '.1f')}")
    return out


def _render_loader(r: dict[str, Any]) -> list[str]:
    return [f"{_f(r['loader']['crops_per_s'], '.1f')} crops/s at {r['crop_zyx']} with {r['num_workers']} workers; "
            f"the cached step consumes {_f(r.get('step_consumes_crops_per_s'), '.1f')} (headroom "
            f"{_f(r.get('headroom'), '.2f')}x)"]


def _render_inference(r: dict[str, Any]) -> list[str]:
    out = []
    for kind in ("evaluate", "predict"):
        x = r[kind]
        pc = x["per_case"]
        ext = f", extractor {_f(x['extractor_s'])} s/case" if x.get("extractor_s") is not None else ""
        out.append(f"{kind}: s/case ERM {_f(pc['erm'].get('median_s'))} / MaskGen {_f(pc['maskgen'].get('median_s'))}"
                   f" ({_f(x['maskgen_overhead_pct'], '+.1f')}%; paper +{PAPER_INFERENCE_OVERHEAD_PCT}%), "
                   f"{x['timed_pairs']} pairs{ext}")
    return out


def _render_estimate(r: dict[str, Any]) -> list[str]:
    out = [f"{r['steps']} steps, validation every {r['val_every']} on {r['val_cases']} cases: "
           f"{_f(r['validation_hours'], '.1f')} h"]
    for batch, rows in r["per_batch"].items():
        out.append(f"batch {batch}: " + ", ".join(
            f"{n} {_f(x['total_hours'], '.1f')} h ({x['bound_by']})" for n, x in rows.items()))
    return out


_RENDER = {"extraction": _render_extraction, "train_step": _render_train, "loader": _render_loader,
           "inference": _render_inference, "estimate": _render_estimate}


# -- entry point --------------------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = common.parser(__doc__.split("\n\n")[0], "paper")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes for the CPU (what the test runs)")
    ap.add_argument("--ct-shape", default=None, help="synthetic CT voxels x,y,z [default 512,512,400]")
    ap.add_argument("--crop", type=int, default=None, help="crop side [default 128]")
    ap.add_argument("--batches", default=None, help="batch sizes compared, comma-separated [default 2,4]")
    ap.add_argument("--channels", type=int, default=None, help="UNet width [default: maskgen's]")
    ap.add_argument("--depth", type=int, default=None, help="UNet depth [default: maskgen's]")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds of the step comparison [default 8]")
    ap.add_argument("--mask-rate", type=float, default=0.5)
    ap.add_argument("--num-workers", type=int, default=None, help="loader workers [default: maskgen's automatic]")
    ap.add_argument("--steps", type=int, default=PAPER_STEPS, help="steps of the estimated run")
    ap.add_argument("--val-cases", type=int, default=AMOS_VAL_CASES, help="validation cases of the estimated run")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
    ap.add_argument("--budget-s", type=float, default=420.0, help="seconds the measuring loops may use in all")
    ap.add_argument("--hard-limit-s", type=float, default=470.0,
                    help="watchdog: print and record what was measured, then exit, after this many seconds")
    ap.set_defaults(extractor="anatomix")
    args = ap.parse_args(argv)
    args.parts = tuple(p for p in args.parts.split(",") if p)
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        ap.error(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}")
    return args


def sizes_of(args: argparse.Namespace) -> Sizes:
    s = TINY if args.tiny else Sizes()
    changes: dict[str, Any] = {}
    if args.ct_shape:
        changes["ct_shape_xyz"] = tuple(int(v) for v in args.ct_shape.split(","))
    if args.batches:
        changes["batches"] = tuple(int(v) for v in args.batches.split(","))
    for name in ("crop", "channels", "depth", "repeats"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    return replace(s, **changes)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse(argv)
    args.user_weights = bool(args.weights)
    common.setup(args)
    sizes = sizes_of(args)
    b = Bench(args, sizes, time.monotonic())
    finish = _Finisher(b)
    timer = _watchdog(finish, args.hard_limit_s)
    try:
        import torch

        if b.cuda:
            torch.backends.cudnn.benchmark = True  # as `maskgen train` sets it: one crop size for the whole run
        args.weights = extractor_weights(args, sizes)
        common.say(f"paper: {args.device}, sizes {sizes}, parts {', '.join(args.parts)}")
        for name in args.parts:
            common.say(f"paper: {name}")
            run_part(b, name)
    finally:
        timer.cancel()
        line = finish()
    return line


if __name__ == "__main__":
    main()
