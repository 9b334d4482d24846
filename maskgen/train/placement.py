"""Where the spatial augmentation runs (`--aug-device`), which device trains, and how many loader workers to use.

Rule for `--aug-device auto`: spatial augmentation runs batched on the device when training on CUDA, and per sample
with MONAI in the loader workers when training on the CPU. Measured by `benchmarks/augment_placement.py`
(`benchmarks/results.jsonl`; crops of 1 image + 16 feature channels + label, batch 2):

- H200 host (16 cores), 128^3: MONAI per-sample spatial 837 ms with the affine, 362 ms expected per sample at
  p = 0.33 (flips and quarter turns included), intensity 163 ms; one training step of the paper's UNet (bf16) takes
  135 ms while the batched device transform takes 2.1 ms per batch. With the spatial transform in the workers each
  batch costs a worker ~1.1 s, so ~8 workers are needed to keep the GPU fed; on the device ~3 suffice, for +1.5 %
  step time. At 64^3: 34 + 12 ms per sample on the CPU vs 0.8 ms per batch on the GPU and a 25 ms step.
- On the CPU the batched path is slower than MONAI (1212 vs 837 ms per sample at 128^3, one thread) and would
  serialise with the training step, while the workers overlap it with the step.
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


def resolve_num_workers(num_workers: int | None, device: torch.device, processes: int = 1) -> int:
    """--num-workers, else automatic from this process's share of the CPUs (`processes` training processes on this
    machine, e.g. one per GPU under torchrun, share them)."""
    if num_workers is not None:
        return num_workers
    cpus = max(1, (os.cpu_count() or 1) // max(1, processes))
    if device.type == "cuda":
        return max(1, min(8, cpus - 1))
    return max(0, min(2, cpus - 1))
