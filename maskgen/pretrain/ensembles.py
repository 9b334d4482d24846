"""Random 3D label ensembles: a smooth random partition with many deformed shapes painted over it.

The partition is the argmax of several upsampled noise fields (smooth, space-filling regions of varied
size). Each shape is an ellipsoid whose boundary is deformed by a smooth noise field; a shape is drawn as a
solid blob, a hollow shell, a thin tube/sheet (a thresholded level set of a noise field inside the
ellipsoid), or (when `SynthConfig.nested_fraction > 0`) a nested shape: a core wrapped in thin layers, each
its own label, whose common boundary is folded by a finer noise field (cortex-like ribbons, capsules, walls).
So the ensemble has large organs, thin walls, layered structures and vessel-like structures at random positions.
Labels are relabelled to consecutive values 0..K-1; label values carry no meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from maskgen.pretrain.config import SynthConfig
from maskgen.pretrain.fields import normalized_coordinates, smooth_field

SHAPE_KINDS = ("blob", "shell", "tube", "nested")


@dataclass(frozen=True)
class EnsembleParams:
    """Everything that determines one label ensemble (`RandomLabelEnsemble.apply` is deterministic)."""

    shape_zyx: tuple[int, int, int]
    num_regions: int
    region_grid: int
    kinds: tuple[str, ...]
    centers: tuple[tuple[float, float, float], ...]   # normalised (z, y, x) in [-1, 1]
    radii: tuple[tuple[float, float, float], ...]     # normalised half-axes
    roughness: tuple[float, ...]
    thickness: tuple[float, ...]                      # shell / tube width (normalised distance units)
    shape_grid: int
    seed: int
    layers: tuple[tuple[float, ...], ...] = ()        # per nested shape: thickness of each layer, outermost first
    folds: tuple[tuple[int, float], ...] = ()          # per nested shape: (fold grid, fold amplitude)

    @property
    def num_labels(self) -> int:
        """Upper bound of the label count: regions, one per shape, one per layer of nested shapes."""
        return self.num_regions + len(self.kinds) + sum(len(t) for t in self.layers)


class RandomLabelEnsemble:
    """Random label maps of a fixed size; `sample(rng)` draws parameters, `apply(params)` renders them."""

    def __init__(self, shape_zyx: tuple[int, int, int], config: SynthConfig | None = None) -> None:
        shape = tuple(int(s) for s in shape_zyx)
        if len(shape) != 3 or min(shape) < 4:
            raise ValueError(f"shape_zyx must be three sizes >= 4, got {shape_zyx}")
        self.shape_zyx = shape
        self.config = config if config is not None else SynthConfig()

    def sample(self, rng: np.random.Generator) -> EnsembleParams:
        c = self.config
        n_shapes = int(rng.integers(c.num_shapes[0], c.num_shapes[1] + 1))
        u = rng.random(n_shapes)
        kinds = tuple("tube" if x < c.tube_fraction else "shell" if x < c.tube_fraction + c.shell_fraction
                      else "nested" if x >= 1.0 - c.nested_fraction else "blob" for x in u)
        centers = rng.uniform(-0.9, 0.9, size=(n_shapes, 3))
        # log-uniform base radius, then a random anisotropy per axis
        base = np.exp(rng.uniform(np.log(c.shape_radius[0]), np.log(c.shape_radius[1]), size=(n_shapes, 1)))
        radii = base * np.exp(rng.uniform(-0.5, 0.5, size=(n_shapes, 3)))
        roughness = rng.uniform(*c.shape_roughness, size=n_shapes)
        thickness = rng.uniform(0.1, 0.3, size=n_shapes)
        params = EnsembleParams(
            shape_zyx=self.shape_zyx,
            num_regions=int(rng.integers(c.num_regions[0], c.num_regions[1] + 1)),
            region_grid=int(rng.integers(3, 7)),
            kinds=kinds,
            centers=tuple(tuple(float(v) for v in row) for row in centers),
            radii=tuple(tuple(float(v) for v in row) for row in radii),
            roughness=tuple(float(v) for v in roughness),
            thickness=tuple(float(v) for v in thickness),
            shape_grid=int(rng.integers(3, 7)),
            seed=int(rng.integers(0, 2**62)),
        )
        n_nested = kinds.count("nested")
        if not n_nested:        # no further draws: runs without nested shapes replay as before
            return params
        layers, folds, radii = [], [], list(params.radii)
        for i in (i for i, kind in enumerate(kinds) if kind == "nested"):
            n_layers = int(rng.integers(c.nested_layers[0], c.nested_layers[1] + 1))
            layers.append(tuple(float(v) for v in rng.uniform(*c.layer_thickness, size=n_layers)))
            folds.append((int(rng.integers(c.fold_grid[0], c.fold_grid[1] + 1)), float(rng.uniform(*c.fold_amplitude))))
            factor = float(rng.uniform(*c.nested_scale))
            radii[i] = tuple(r * factor for r in radii[i])
        return replace(params, layers=tuple(layers), folds=tuple(folds), radii=tuple(radii))

    def apply(self, params: EnsembleParams) -> torch.Tensor:
        """The (Z, Y, X) int64 label map with values 0..K-1."""
        g = torch.Generator().manual_seed(params.seed)
        shape = params.shape_zyx
        if params.num_regions > 1:
            labels = smooth_field(shape, params.region_grid, g, channels=params.num_regions).argmax(0)
        else:
            labels = torch.zeros(shape, dtype=torch.int64)
        n = len(params.kinds)
        if n:
            coords = normalized_coordinates(shape)                          # (3, Z, Y, X)
            noise = smooth_field(shape, params.shape_grid, g, channels=2 * n)  # two fields per shape
            centers = torch.tensor(params.centers, dtype=torch.float32).view(n, 3, 1, 1, 1)
            radii = torch.tensor(params.radii, dtype=torch.float32).view(n, 3, 1, 1, 1)
            dist = (((coords.unsqueeze(0) - centers) / radii) ** 2).sum(1).sqrt()   # (n, Z, Y, X)
            nested = iter(zip(params.layers, params.folds))
            extra = params.num_regions + n                                   # next free label value
            for i, kind in enumerate(params.kinds):
                d = dist[i] + params.roughness[i] * noise[2 * i]
                t = params.thickness[i]
                if kind == "nested":
                    thicknesses, (fold_grid, fold_amplitude) = next(nested)
                    d = d + fold_amplitude * smooth_field(shape, fold_grid, g)[0]
                    labels = torch.where(d < 1.0, params.num_regions + i, labels)       # the core
                    outer = 1.0
                    for thick in thicknesses:                                         # layers, outermost first
                        labels = torch.where((d < outer) & (d >= outer - thick), extra, labels)
                        outer -= thick
                        extra += 1
                    continue
                if kind == "blob":
                    inside = d < 1.0
                elif kind == "shell":
                    inside = (d < 1.0) & (d > 1.0 - t)
                else:  # tube: intersection of two thin level-set slabs (a curve), or one slab (a sheet)
                    slab = noise[2 * i + 1].abs() < 0.5 * t
                    inside = (d < 1.0) & slab
                    if i % 2 == 0:
                        inside &= noise[2 * i].abs() < 0.5 * t + 0.1
                labels = torch.where(inside, params.num_regions + i, labels)
        return relabel_consecutive(labels)


def relabel_consecutive(labels: torch.Tensor) -> torch.Tensor:
    """Map the label values present to 0..K-1 (int64), keeping their order."""
    _, inverse = torch.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).to(torch.int64)
