"""Where training runs (`maskgen.train.placement`): device, spatial augmentation, loader workers."""

from __future__ import annotations

import pytest
import torch

from maskgen.errors import MaskgenError
from maskgen.train.placement import resolve_aug_device, resolve_device, resolve_num_workers


def test_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"
    with pytest.raises(MaskgenError, match="--device cuda .*no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"


def test_spatial_augmentation_runs_on_the_device_only_when_training_on_cuda():
    assert resolve_aug_device("auto", torch.device("cuda")) == "device"
    assert resolve_aug_device("auto", torch.device("cpu")) == "cpu"
    assert resolve_aug_device("device", torch.device("cpu")) == "device"
    assert resolve_aug_device("cpu", torch.device("cuda")) == "cpu"


def test_loader_workers(monkeypatch):
    import os

    assert resolve_num_workers(3, torch.device("cpu")) == 3 and resolve_num_workers(0, torch.device("cuda")) == 0
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert resolve_num_workers(None, torch.device("cuda")) == 8 and resolve_num_workers(None, torch.device("cpu")) == 2
    assert resolve_num_workers(None, torch.device("cuda"), processes=4) == 3  # 4 GPUs share the 16 cores
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert resolve_num_workers(None, torch.device("cuda")) == 1 and resolve_num_workers(None, torch.device("cpu")) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert resolve_num_workers(None, torch.device("cpu")) == 0
