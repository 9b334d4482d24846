"""Where the spatial augmentation runs (`--aug-device`), and how many loader workers to use.

Rule (measured by `benchmarks/augment_placement.py`, results in `benchmarks/results.jsonl`): on CUDA the batched
`affine_grid` + `grid_sample` over all channels of the batch on the GPU costs about a millisecond per batch, while
MONAI's per-sample resampling of image + features + label costs the loader workers hundreds of milliseconds per
crop, more than a training step; so `auto` puts the spatial transform on the device whenever training runs on
CUDA. On the CPU, the batched path is the same arithmetic on the same cores and would serialise it with the
training step, while the worker path overlaps it with the step: `auto` keeps it in the workers.
"""

from __future__ import annotations

import os

import torch

from maskgen.errors import MaskgenError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MaskgenError("--device cuda was asked for but PyTorch sees no CUDA device; use --device cpu or auto.")
    return torch.device(name)


def resolve_aug_device(aug_device: str, device: torch.device) -> str:
    """'cpu' (MONAI per sample, in the loader workers) or 'device' (batched on the training device)."""
    if aug_device == "auto":
        return "device" if device.type == "cuda" else "cpu"
    return aug_device


def resolve_num_workers(num_workers: int | None, device: torch.device) -> int:
    if num_workers is not None:
        return num_workers
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(8, cpus - 1))
    return max(0, min(2, cpus - 1))
