"""`predict_files`: label maps for new NIfTI volumes from any domain, on each input's own grid and affine.

Per file: preprocess as the run's pipeline says (RAS, pipeline spacing, intensity normalisation), compute features
with the run's own extractor (refused if its weights differ from the store's), sliding-window inference as in
evaluation, argmax, then `label_to_original` resamples the label map (nearest) back onto the input's original voxel
grid with its original affine. Output: `<out>/<name>.nii.gz`, where an nnU-Net channel suffix `_0000` is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from maskgen.errors import MaskgenError


@dataclass(frozen=True)
class Prediction:
    input: Path
    output: Path | None
    error: str | None = None


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
) -> list[Prediction]:
    """Predict every input file; failures of single files are returned (with the reason), not raised."""
    from maskgen.data.nifti import save_nifti_atomic
    from maskgen.data.preprocess import label_to_original, preprocess_image_file
    from maskgen.evaluate.runs import _check_overlap, features_for, open_run, run_extractor

    _check_overlap(overlap)
    files = input_files(input_path)
    names = output_names(files, Path(out_dir))
    run = open_run(run_dir, checkpoint, device)
    extractor = run_extractor(run, weights) if run.uses_features else None
    pipeline = run.store.pipeline
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i, (path, name) in enumerate(zip(files, names)):
        try:
            pre = preprocess_image_file(path, pipeline, channel)
            feats = features_for(run, extractor, pre.image)
            label = run.segment(pre.image, feats, run.fresh_stats(feats), overlap)
            out = out_dir / name
            save_nifti_atomic(label_to_original(label, pre.geometry), out)
            results.append(Prediction(path, out))
        except MaskgenError as e:
            results.append(Prediction(path, None, str(e)))
        if progress is not None:
            progress(i + 1, len(files), path.name)
    return results

