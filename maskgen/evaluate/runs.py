"""A trained run ready for inference: model, TrainConfig, its feature store, and (on demand) its own extractor.

`open_run` loads a run folder's checkpoint with `maskgen.train.checkpoint.load_run` and opens the store recorded in the
checkpoint (or one passed explicitly, which must have been made by the same extractor). `LoadedRun.segment`
predicts a label map exactly as validation does during training (`maskgen.train.inference.predict_volume`: MONAI
sliding windows of the training crop, Gaussian blending, inputs assembled per window by the train module).
`run_extractor` rebuilds the extractor that made the store and refuses one whose weights differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskgen.errors import MaskgenError

@dataclass
class LoadedRun:
    run_dir: Path
    checkpoint: str
    model: Any          # UNet in eval mode on `device`
    cfg: Any            # TrainConfig
    ckpt: dict
    store: Any          # FeatureStore
    device: Any         # torch.device

    @property
    def step(self) -> int:
        return int(self.ckpt.get("step", 0))

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.store.pipeline.classes)

    @property
    def num_foreground(self) -> int:
        return len(self.classes)

    @property
    def uses_features(self) -> bool:
        from maskgen.train.inputs import uses_features

        return uses_features(self.cfg.inputs)

    @property
    def input_names(self) -> list[str]:
        """Name of each network input channel, in order: "image", "feature 0", ..."""
        from maskgen.train.inputs import uses_image

        names = ["image"] if uses_image(self.cfg.inputs) else []
        if self.uses_features:
            names += [f"feature {c}" for c in range(int(self.store.num_features))]
        return names

    def stats(self, info: Any) -> tuple[Any, Any] | None:
        """Per-volume feature statistics for `--feature-norm volume`; None for per-crop normalisation."""
        if self.cfg.feature_norm != "volume":
            return None
        return (info.feature_mean, info.feature_std)

    def fresh_stats(self, features: np.ndarray | None) -> tuple[Any, Any] | None:
        """Per-volume statistics of features computed here (predict, robustness), as the store computes them at
        extraction; None unless the run was trained with `--feature-norm volume`."""
        from maskgen.store.writer import channel_stats

        if features is None or self.cfg.feature_norm != "volume":
            return None
        return channel_stats(features)

    def logits(self, image: np.ndarray, features: np.ndarray | None, stats: Any = None, overlap: float = 0.5,
               model: Any = None) -> Any:
        """Class logits (K+1, Z, Y, X) float32 CPU tensor of one volume (sliding window, Gaussian blending)."""
        from maskgen.train.inference import predict_volume

        return predict_volume(model if model is not None else self.model, image,
                              features if self.uses_features else None, self.cfg, self.device, overlap, stats,
                              output="logits")

    def segment(self, image: np.ndarray, features: np.ndarray | None, stats: Any = None, overlap: float = 0.5,
                model: Any = None) -> np.ndarray:
        """Label map (Z, Y, X) uint8 of one volume: argmax of the sliding-window logits."""
        return self.logits(image, features, stats, overlap, model).argmax(0).numpy().astype(np.uint8)


def _check_overlap(overlap: float) -> None:
    if not 0.0 <= overlap < 1.0:
        raise MaskgenError(f"--overlap {overlap} must be in [0, 1) (the paper's validation uses 0.5).")


def labelled_cases(store: Any, split: str) -> list[Any]:
    """The complete labelled cases (`CaseInfo`) of `split` in a FeatureStore; a MaskgenError naming the splits
    present when there is none."""
    infos = [c for c in store.cases(split=split) if c.has_label]
    if not infos:
        have = sorted({c.split for c in store.cases()})
        raise MaskgenError(
            f"{store.path} has no labelled complete case in split {split!r} (splits present: "
            f"{', '.join(have) or 'none'}); choose another --split."
        )
    return infos


def open_run(run_dir: str | Path, checkpoint: str = "best", device: str = "auto",
             features: str | Path | None = None) -> LoadedRun:
    """Load `run_dir/<checkpoint>.pt` and the run's feature store (`features` overrides the recorded path)."""
    from maskgen.store.reader import FeatureStore
    from maskgen.train.checkpoint import load_run
    from maskgen.train.placement import resolve_device

    dev = resolve_device(device)
    model, cfg, ckpt = load_run(run_dir, checkpoint, dev)
    from maskgen.store.kv import store_exists
    from maskgen.store.location import as_location

    recorded = (ckpt.get("store") or {}).get("path") or cfg.features
    path = as_location(features if features is not None else recorded)  # a folder or an fsspec URL
    if not store_exists(path):
        raise MaskgenError(
            f"the feature store of run {run_dir} ({path}) does not exist; pass its new location with --features."
        )
    store = FeatureStore(path)
    from maskgen.extract.registry import identity_problems

    made_by = (ckpt.get("store") or {}).get("extractor")
    if made_by is not None and identity_problems(made_by, store.extractor):
        raise MaskgenError(
            f"{path} was made by another extractor ({store.extractor.get('name')}, weights sha256 "
            f"{_short(store.extractor.get('weights_sha256'))}) than run {run_dir} was trained on "
            f"({made_by.get('name')}, {_short(made_by.get('weights_sha256'))}); use the run's own store."
        )
    return LoadedRun(Path(run_dir), checkpoint, model, cfg, ckpt, store, dev)


def _short(sha: Any) -> str:
    return "none" if not sha else str(sha)[:12]


def run_extractor(run: LoadedRun, weights: str | Path | None = None) -> Any:
    """The frozen extractor that made the run's store, on the run's device (`maskgen.extract.registry.
    rebuild_extractor`: `weights` if given, else the recorded file or the registry's lookup; never a download;
    MaskgenError naming both sha256 when the one found would make other features)."""
    from maskgen.extract.registry import rebuild_extractor

    return rebuild_extractor(run.store.extractor, weights=weights,
                             extract_config=run.store.attrs.get("extract_config"), device=run.device,
                             purpose=f"run {run.run_dir} needs the extractor that made {run.store.path}")


def features_for(run: LoadedRun, extractor: Any, image: np.ndarray) -> np.ndarray | None:
    """Raw features of a (1, Z, Y, X) image as the store holds them (None when the run does not use features)."""
    if not run.uses_features:
        return None
    from maskgen.extract.inference import extract_volume

    return extract_volume(extractor, image, device=run.device)
