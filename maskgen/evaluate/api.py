"""`maskgen.evaluate(...)` and `maskgen.predict(...)`: the Python forms of `maskgen evaluate` and `maskgen predict`
(docs/python-api.md). Heavy imports happen inside."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def evaluate(run: str | Path, split: str = "test", *, checkpoint: str = "best", overlap: float = 0.5,
             device: str = "auto", features: str | Path | None = None, empty_class: str = "ignore",
             metrics: str | Sequence[str] = ("dice",), nsd_tolerance: float = 2.0) -> Any:
    """Score a trained run on every labelled case of a split of its store, exactly as `maskgen evaluate` does:
    writes eval-<split>.json, eval-<split>.csv and an nnU-Net-style summary-<split>.json into the run folder.

    Args:
        run: the run folder made by `train`.
        split: "train" | "val" | "test".
        checkpoint: "best" (best validation Dice) | "last".
        overlap: sliding-window overlap in [0, 1).
        device: "auto" | "cpu" | "cuda".
        features: the run's store, if it moved (default: the path recorded in the run).
        empty_class: Dice of a class absent from the reference: "ignore" (the paper, MONAI) | "zero" (nnU-Net).
        metrics: "dice" plus "hd95" and/or "nsd" (normalised surface Dice at `nsd_tolerance` mm).

    Returns:
        The `EvalResult`: `.cases` (Dice per case and class), `.overall` and `.by_domain` (mean and s.e.),
        `.scored` (every metric per case), `.settings`.
    """
    from maskgen.evaluate.evaluate import evaluate_run

    return evaluate_run(run, split, checkpoint, overlap, device, features, empty_class=empty_class,
                        metrics=metrics, nsd_tolerance=nsd_tolerance)


def predict(run: str | Path, input: str | Path, out: str | Path, *, domain: str | None = None,
            checkpoint: str = "best", overlap: float = 0.5, device: str = "auto", weights: str | Path | None = None,
            channel: int | None = None, save_probabilities: str | None = None) -> list[Any]:
    """Segment new NIfTI volumes with a trained run, exactly as `maskgen predict` does: label maps
    `<out>/<name>.nii.gz` on each input's own grid, with its affine and sform/qform codes.

    Args:
        run: the run folder made by `train`.
        input: a NIfTI file or a folder of them.
        out: the folder for the label maps.
        domain: the imaging domain of the inputs, whose normalisation rule they get (default: the rule of the run's
            training domains).
        checkpoint, overlap, device: as for `evaluate`.
        weights: extractor weights, if not where the store was made from (their sha256 must match).
        channel: the volume of a 4D input to segment.
        save_probabilities: also write the softmax, "nifti" or "npz" (nnU-Net's format); None: labels only.

    Returns:
        One `Prediction` per input (`.input`, `.output`, `.probabilities`, `.normalization`).

    Raises:
        MaskgenError: naming every input that failed (the others are written).
    """
    from maskgen.evaluate.predict import predict_files, raise_failures

    results = predict_files(run, input, out, checkpoint, overlap, device, weights, channel,
                            save_probabilities=save_probabilities, domain=domain)
    raise_failures(results)
    return results
