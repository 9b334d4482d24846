"""Training pairs for contrastive pretraining: one random label map, rendered twice with independent appearance.

`PairSynthesizer.sample(rng)` draws every random choice (label source, ensemble, spatial transform, two
appearances) into a `PairParams`; `apply(params)` is deterministic. `synthesize_batch(synth, seed, step, n)`
makes a batch that is a pure function of (seed, step), so training resumes exactly without saving data state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from maskgen.pretrain.config import SynthConfig
from maskgen.pretrain.ensembles import EnsembleParams, RandomLabelEnsemble
from maskgen.pretrain.labelmaps import LabelCropParams, LabelFolder
from maskgen.pretrain.render import AppearanceParams, RandomAppearance
from maskgen.pretrain.spatial import RandomSpatial, SpatialParams


@dataclass(frozen=True)
class PairParams:
    labels: EnsembleParams | LabelCropParams
    spatial: SpatialParams
    views: tuple[AppearanceParams, AppearanceParams]
    starts: tuple[tuple[int, int, int], tuple[int, int, int]] = ((0, 0, 0), (0, 0, 0))   # crop starts of the views


@dataclass
class Pair:
    view1: torch.Tensor      # (1, Z, Y, X) float32 in [0, 1]
    view2: torch.Tensor      # (1, Z, Y, X) float32 in [0, 1]
    labels: torch.Tensor     # (Z, Y, X) int64, values 0..K-1 (of view 1)
    offset: tuple[int, int, int] = (0, 0, 0)   # view-2 crop start minus view-1 crop start: voxel p of view 1
                                               # is voxel p - offset of view 2


class PairSynthesizer:
    """Random label map (synthetic ensemble, or a crop of a real one) -> spatial transform -> two renderings."""

    def __init__(self, size: int, config: SynthConfig | None = None, label_folder: LabelFolder | None = None) -> None:
        if size < 8:
            raise ValueError(f"size must be >= 8 voxels, got {size}")
        self.size = int(size)
        self.config = config if config is not None else SynthConfig()
        self.shape_zyx = (self.size,) * 3
        self.shift = int(self.config.max_view_shift)
        if 2 * self.shift > self.size:
            raise ValueError(f"max_view_shift {self.shift} must be at most half the pair size {self.size}")
        self.render_zyx = (self.size + self.shift,) * 3     # both views are cut from this volume
        self.ensemble = RandomLabelEnsemble(self.render_zyx, self.config)
        self.spatial = RandomSpatial(self.config)
        self.appearance = RandomAppearance(self.config)
        if label_folder is not None and tuple(label_folder.shape_zyx) != self.render_zyx:
            raise ValueError(f"label folder crops {label_folder.shape_zyx} differ from the rendered size "
                             f"{self.render_zyx} (pair size plus max_view_shift)")
        self.label_folder = label_folder

    def _labels(self, params: EnsembleParams | LabelCropParams) -> torch.Tensor:
        if isinstance(params, LabelCropParams):
            if self.label_folder is None:
                raise ValueError("parameters name a real label map but this synthesizer has no label folder")
            return self.label_folder.apply(params)
        return self.ensemble.apply(params)

    def sample(self, rng: np.random.Generator) -> PairParams:
        use_real = self.label_folder is not None and rng.random() < self.config.p_real_labels
        label_params = self.label_folder.sample(rng) if use_real else self.ensemble.sample(rng)
        spatial = self.spatial.sample(rng)
        # Appearance parameters cover an upper bound of the label count (warping only drops labels).
        if isinstance(label_params, EnsembleParams):
            num_labels = label_params.num_labels
        else:
            num_labels = int(self._labels(label_params).max()) + 1
        views = (self.appearance.sample(rng, num_labels), self.appearance.sample(rng, num_labels))
        if not self.shift:      # no further draws: runs without shifted views replay as before
            return PairParams(labels=label_params, spatial=spatial, views=views)
        starts = rng.integers(0, self.shift + 1, size=(2, 3))
        return PairParams(labels=label_params, spatial=spatial, views=views,
                          starts=(tuple(int(v) for v in starts[0]), tuple(int(v) for v in starts[1])))

    def apply(self, params: PairParams) -> Pair:
        labels = self.spatial.apply(self._labels(params.labels), params.spatial)
        view1 = self.appearance.apply(labels, params.views[0])
        view2 = self.appearance.apply(labels, params.views[1])
        if not self.shift:
            return Pair(view1=view1, view2=view2, labels=labels)
        (a, b), n = params.starts, self.size
        crop = lambda t, s: t[..., s[0]:s[0] + n, s[1]:s[1] + n, s[2]:s[2] + n].contiguous()  # noqa: E731
        return Pair(view1=crop(view1, a), view2=crop(view2, b), labels=crop(labels, a),
                    offset=tuple(int(bi - ai) for ai, bi in zip(a, b)))

    def __call__(self, rng: np.random.Generator) -> Pair:
        return self.apply(self.sample(rng))


def step_rng(seed: int, step: int, index: int) -> np.random.Generator:
    """The generator of sample `index` of training step `step`: independent streams, no shared state."""
    return np.random.default_rng([int(seed), int(step), int(index)])


def synthesize_batch(synth: PairSynthesizer, seed: int, step: int, batch_size: int) -> tuple[torch.Tensor, ...]:
    """(view1 (B,1,Z,Y,X), view2 (B,1,Z,Y,X), labels (B,Z,Y,X) int64, offsets (B,3) int64) for one step; a pure
    function of its args. offsets[b] = view-2 crop start minus view-1 crop start (zeros without shifted views)."""
    pairs = [synth(step_rng(seed, step, i)) for i in range(batch_size)]
    return (torch.stack([p.view1 for p in pairs]), torch.stack([p.view2 for p in pairs]),
            torch.stack([p.labels for p in pairs]), torch.tensor([p.offset for p in pairs], dtype=torch.int64))
