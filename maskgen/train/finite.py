"""Finite weights: a cheap check after every optimiser step, and a full one before a checkpoint is written or used.

`WeightsCheck(model)()` runs after each update: one fused reduction over every parameter and floating buffer
(`torch._foreach_norm`, the L2 norm per tensor: a multi-tensor kernel on CUDA, vectorised on the CPU), stacked and
tested with one `isfinite().all()`: a single host sync per step. NaN/inf propagate into the norms; only weights
beyond ~1e19 (whose squares overflow) could make a finite model look non-finite, so a failed fast check is confirmed
exactly, tensor by tensor, before it is reported. (The max-norm, `ord=inf`, cannot overflow but measured 6x
slower on the CPU.) `nonfinite(tree)` counts NaN/inf values in a state_dict, an optimiser state or a checkpoint,
naming the tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch


class WeightsCheck:
    """Are all parameters and floating buffers of `model` finite? Built once (the tensors are updated in place)."""

    def __init__(self, model: torch.nn.Module):
        self.tensors = [p.detach() for p in model.parameters()]
        self.tensors += [b for b in model.buffers() if b.is_floating_point()]

    def __call__(self) -> bool:
        if not self.tensors:
            return True
        if bool(torch.stack(torch._foreach_norm(self.tensors)).isfinite().all()):
            return True
        return not nonfinite(self.tensors)  # exact: huge finite weights can overflow a sum of squares


@dataclass(frozen=True)
class NonFinite:
    """NaN/inf values found: how many, out of how many floating values, and in which tensors."""

    values: int
    total: int
    names: tuple[str, ...]

    def __bool__(self) -> bool:
        return self.values > 0

    def describe(self) -> str:
        shown = ", ".join(self.names[:3]) + (f" and {len(self.names) - 3} more" if len(self.names) > 3 else "")
        return f"{self.values:,} of {self.total:,} values non-finite in {len(self.names)} tensors ({shown})"


def nonfinite(tree: Any, prefix: str = "") -> NonFinite:
    """NaN/inf values in every floating tensor of a nested dict/list (state_dicts, optimiser states, checkpoints)."""
    values = total = 0
    names = []
    for name, t in _tensors(tree, prefix):
        if not t.is_floating_point():
            continue
        bad = int((~torch.isfinite(t)).sum())
        total += t.numel()
        if bad:
            values += bad
            names.append(name)
    return NonFinite(values, total, tuple(names))


def _tensors(tree: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if torch.is_tensor(tree):
        yield prefix, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _tensors(v, f"{prefix}.{i}" if prefix else str(i))
