"""How similar two feature maps of the same anatomy are (e.g. one subject imaged with two contrasts).

`cross_domain_stability(feat_a, feat_b)` compares voxel-aligned (C, Z, Y, X) feature maps:
- `cosine`: mean over voxels of the cosine similarity of the two C-vectors, after standardising each channel over
  the sampled voxels (as training normalises features); 1 = identical up to per-channel affine changes.
- `cka`: linear centred kernel alignment (Kornblith et al., 2019) between the (voxels x C) matrices; invariant to
  rotations and isotropic scaling of the channels; for single-channel inputs it is the squared Pearson correlation.
- `channel_corr`: mean over channels of the Pearson correlation of matching channels (only when C_a == C_b).
Voxels are restricted to `mask` (e.g. the body or brain) and subsampled to `max_voxels` with a fixed seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _standardise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True)
    return x / np.where(std > 0, std, 1.0)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of (n, c1) and (n, c2) matrices; 0 when either is constant."""
    x = x - x.mean(axis=0, keepdims=True)
    y = y - y.mean(axis=0, keepdims=True)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else 0.0


def cross_domain_stability(
    feat_a: Any,
    feat_b: Any,
    mask: Any = None,
    max_voxels: int = 20000,
    seed: int = 0,
) -> dict[str, float]:
    """Similarity of two voxel-aligned feature maps (C, Z, Y, X); see the module docstring for the measures."""
    a, b = _as_numpy(feat_a), _as_numpy(feat_b)
    if a.ndim != 4 or b.ndim != 4 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"cross_domain_stability: need (C, Z, Y, X) maps on one grid, got {a.shape} and {b.shape}")
    if max_voxels < 2:
        raise ValueError(f"cross_domain_stability: max_voxels must be >= 2, got {max_voxels}")
    flat = np.ones(a.shape[1:], bool) if mask is None else _as_numpy(mask).astype(bool)
    if flat.shape != a.shape[1:]:
        raise ValueError(f"cross_domain_stability: mask shape {flat.shape} != feature grid {a.shape[1:]}")
    idx = np.flatnonzero(flat)
    if idx.size < 2:
        raise ValueError("cross_domain_stability: the mask selects fewer than 2 voxels")
    if idx.size > max_voxels:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_voxels, replace=False))
    xa = a.reshape(a.shape[0], -1)[:, idx].T.astype(np.float64)
    xb = b.reshape(b.shape[0], -1)[:, idx].T.astype(np.float64)
    sa, sb = _standardise(xa), _standardise(xb)
    result = {"voxels": float(idx.size), "cka": linear_cka(xa, xb)}
    if a.shape[0] == b.shape[0]:
        norms = np.linalg.norm(sa, axis=1) * np.linalg.norm(sb, axis=1)
        valid = norms > 0
        result["cosine"] = float(np.mean((sa * sb).sum(axis=1)[valid] / norms[valid])) if valid.any() else 0.0
        result["channel_corr"] = float(np.mean((sa * sb).mean(axis=0)))
    return result
