"""`predict_files`: label maps for new NIfTI volumes from any domain, on each input's own grid and affine.

Per file: preprocess as the run's pipeline says (RAS, pipeline spacing, intensity normalisation by the rule of the
inputs' domain, `input_domain`: `--domain`, else the rule of the run's training domains), compute features
with the run's own extractor (refused if its weights differ from the store's), sliding-window inference as in
evaluation, argmax, then `label_to_original` resamples the label map (nearest) back onto the input's original voxel
grid with its original affine and the input's sform/qform codes. Output: `<out>/<name>.nii.gz`, where an nnU-Net
channel suffix `_0000` is dropped; with `save_probabilities` also the softmax (resampled linearly onto the same grid)
as `<name>_probabilities.nii.gz` or nnU-Net's `<name>.npz`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from maskgen.errors import MaskgenError, OptionError


PROBABILITY_FORMATS = ("nifti", "npz")


@dataclass(frozen=True)
class Prediction:
    input: Path
    output: Path | None
    error: str | None = None
    probabilities: Path | None = None
    normalization: str = ""  # the intensity rule applied, e.g. "ct [-1024, 1024]"


def input_files(path: str | Path) -> list[Path]:
    """One NIfTI file, or the NIfTI files directly inside a folder (sorted; hidden files skipped)."""
    from maskgen.data.cases import nifti_files, nifti_stem

    path = Path(path)
    if path.is_file():
        if nifti_stem(path.name) is None:
            raise MaskgenError(f"--input {path} is not a NIfTI file (.nii or .nii.gz).")
        return [path]
    if path.is_dir():
        files = nifti_files(path)
        if not files:
            raise MaskgenError(f"--input {path} holds no .nii/.nii.gz file.")
        return files
    raise MaskgenError(f"--input {path} does not exist.")


def output_name(path: Path) -> str:
    from maskgen.data.cases import nifti_stem

    stem = nifti_stem(path.name) or path.name
    if stem.endswith("_0000"):
        stem = stem[: -len("_0000")]
    return f"{stem}.nii.gz"


def output_names(files: list[Path], out_dir: Path) -> list[str]:
    """The output file name of each input; MaskgenError when two inputs would write the same file."""
    names = [output_name(f) for f in files]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        clash = [str(f) for f, n in zip(files, names) if n == dup[0]]
        raise MaskgenError(f"{' and '.join(clash)} would both be written to {Path(out_dir) / dup[0]}; "
                           "predict them into different --out folders.")
    return names


def predict_files(
    run_dir: str | Path,
    input_path: str | Path,
    out_dir: str | Path,
    checkpoint: str = "best",
    overlap: float = 0.5,
    device: str = "auto",
    weights: str | Path | None = None,
    channel: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    save_probabilities: str | None = None,
    domain: str | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Prediction]:
    """Predict every input file; failures of single files are returned (with the reason), not raised.

    `domain`: the imaging domain of the inputs, whose normalisation rule (the pipeline's `[normalization]` table)
    they get, as the store's cases of that domain got at extraction; None: see `input_domain`. `log` gets one line
    saying which rule was applied and why.

    `save_probabilities`: also write the softmax on the input's grid, "nifti" (`<name>_probabilities.nii.gz`, 4D
    X, Y, Z, class) or "npz" (`<name>.npz` with `probabilities` (class, Z, Y, X) as nnU-Net writes it); None: only
    the label maps.
    """
    from maskgen.evaluate.runs import _check_overlap, open_run, run_extractor

    _check_overlap(overlap)
    if save_probabilities not in (None, *PROBABILITY_FORMATS):
        raise OptionError("probabilities_format", save_probabilities,
                          f"is not one of {', '.join(PROBABILITY_FORMATS)}")
    files = input_files(input_path)
    out_dir = Path(out_dir)
    names = output_names(files, out_dir)
    run = open_run(run_dir, checkpoint, device)
    domain, note = input_domain(run.store, domain)
    if log is not None:
        log(f"normalisation: {note}")
    extractor = run_extractor(run, weights) if run.uses_features else None
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i, (path, name) in enumerate(zip(files, names)):
        try:
            results.append(_predict_one(run, extractor, path, out_dir / name, channel, overlap, save_probabilities,
                                        domain))
        except MaskgenError as e:
            results.append(Prediction(path, None, str(e)))
        if progress is not None:
            progress(i + 1, len(files), path.name)
    return results


def raise_failures(results: list[Prediction]) -> None:
    """MaskgenError naming every input that failed (with its reason), if any did."""
    failed = [r for r in results if r.error is not None]
    if failed:
        raise MaskgenError(f"{len(failed)} of {len(results)} inputs failed: "
                           + "; ".join(f"{r.input}: {r.error}" for r in failed))


def input_domain(store: Any, domain: str | None) -> tuple[str | None, str]:
    """The domain whose normalisation rule `predict` applies to its inputs, and one line saying which rule and why.

    Given: that domain (an unknown one gets the pipeline's default rule, as at extraction). Not given: the pipeline's
    only rule, or, with a `[normalization]` table, the rule of the run's training domains (a CT-trained run windows
    its inputs as CT); a MaskgenError asks for --domain when the training domains had different rules."""
    pipeline = store.pipeline
    table = pipeline.describe_normalization()
    if domain is not None:
        known = {d for d, _ in pipeline.normalization_by_domain} | {c.domain for c in store.cases()}
        unknown = "" if domain in known else " (a domain the store and pipeline do not name: the default rule)"
        return domain, f"{pipeline.intensity_rule(domain).describe()}, the rule of domain {domain}{unknown}"
    if not pipeline.normalization_by_domain:
        return None, f"{pipeline.intensity_rule().describe()}, the pipeline's rule"
    train = sorted({c.domain for c in store.cases(split="train")})
    rules = sorted({pipeline.intensity_rule(d).describe() for d in train})
    if len(rules) != 1:
        raise MaskgenError(
            f"the run's pipeline normalises each domain its own way ({table}) and the run was trained on "
            f"{', '.join(train) or 'no case'}: pass --domain NAME, the imaging domain of the inputs."
        )
    return train[0], (f"{rules[0]}, the rule of the training domain(s) {', '.join(train)}; inputs of another "
                      f"domain need --domain ({table})")


def _predict_one(run: Any, extractor: Any, path: Path, out: Path, channel: int | None, overlap: float,
                 save_probabilities: str | None, domain: str | None = None) -> Prediction:
    import torch

    from maskgen.data.nifti import load_header, save_nifti_atomic
    from maskgen.data.preprocess import label_to_original, preprocess_image_file
    from maskgen.evaluate.runs import features_for

    pipeline = run.store.pipeline
    pre = preprocess_image_file(path, pipeline, channel, domain)
    feats = features_for(run, extractor, pre.image)
    logits = run.logits(pre.image, feats, run.fresh_stats(feats), overlap)
    label = logits.argmax(0).numpy().astype(np.uint8)
    header = load_header(path).header
    save_nifti_atomic(with_xforms_of(label_to_original(label, pre.geometry), header), out)
    prob_path = None
    if save_probabilities is not None:
        prob_path = _save_probabilities(torch.softmax(logits, 0).numpy(), pre.geometry, header, out,
                                        save_probabilities)
    return Prediction(path, out, probabilities=prob_path, normalization=pipeline.intensity_rule(domain).describe())


def _save_probabilities(probs_czyx: np.ndarray, geometry: Any, header: Any, out: Path, fmt: str) -> Path:
    """The softmax resampled (linear) onto the input's grid, as NIfTI or nnU-Net-style .npz."""
    import nibabel as nib

    from maskgen.atomic import atomic_path
    from maskgen.data.nifti import save_nifti_atomic
    from maskgen.data.preprocess import resample_to_original

    probs = resample_to_original(probs_czyx, geometry, mode="bilinear")  # (C, X, Y, Z)
    probs = np.clip(probs, 0.0, 1.0).astype(np.float32)
    stem = out.name[: -len(".nii.gz")]
    if fmt == "npz":
        path = out.with_name(f"{stem}.npz")
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, probabilities=np.ascontiguousarray(probs.transpose(0, 3, 2, 1)))
        return path
    path = out.with_name(f"{stem}_probabilities.nii.gz")
    img = nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(probs, 0, -1)), geometry_affine(geometry))
    img.header.set_data_dtype(np.float32)
    save_nifti_atomic(with_xforms_of(img, header), path)
    return path


def geometry_affine(geometry: Any) -> np.ndarray:
    from maskgen.data.preprocess import Geometry

    return Geometry.coerce(geometry).original_affine_array


def with_xforms_of(img: Any, header: Any) -> Any:
    """`img` with the sform and qform (matrices and codes) of the input `header`: the output lies on the input's
    grid, so a viewer places it exactly where the input is, whatever codes the input used (scanner, aligned,
    template, ...)."""
    sform, sform_code = header.get_sform(), int(header["sform_code"])
    qform, qform_code = header.get_qform(), int(header["qform_code"])
    img.set_sform(sform, code=sform_code)
    img.set_qform(qform, code=qform_code)
    return img
