"""Training batches streamed from the feature store: crop sampling, CPU augmentation, DataLoader workers.

Batch `step` is a pure function of (run seed, step): worker w of W builds steps start+w, start+w+W, ... and the
DataLoader hands them out round-robin, so batches arrive in step order and are identical for any number of workers,
on a fresh run or after `--resume`. The work splits by worker x rank: with `world_size` R data-parallel processes,
the global batch of a step has R x batch_size samples (slots), rank r builds slots [r B, (r + 1) B) of every step
(`rank_slots`), and each rank's workers split its steps as above (`worker_steps`); R = 1 is the single process. Workers are forked (fast start) with the default zarr reader and spawned with the
tensorstore reader (which forbids fork); spawned workers need the usual `if __name__ == "__main__":` guard in scripts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from maskgen.errors import MaskgenError
from maskgen.train.augment import Augmenter
from maskgen.train.sampling import CropSampler, sample_rng
from maskgen.train.spatial_device import pack_spatial
from maskgen.train.views import choose_view


@dataclass(frozen=True)
class LoaderSpec:
    """What a worker needs to build batches (picklable)."""

    case_ids: tuple[str, ...]
    crop_zyx: tuple[int, int, int]
    batch_size: int
    seed: int
    fg_fraction: float
    aug_prob: float
    allow_flips: bool
    spatial_on_cpu: bool       # False: spatial augmentation runs batched on the training device
    read_features: bool        # False for --inputs image and --online-features (features are not used)
    volume_stats: bool         # attach per-case feature mean/std (--feature-norm volume)
    rank: int = 0              # this process's rank among `world_size` data-parallel processes
    world_size: int = 1
    views: int = 0             # augmented views to draw crops from (maskgen.train.views); 0: the clean arrays

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"LoaderSpec: rank {self.rank} must be in [0, world_size={self.world_size})")


def worker_steps(start_step: int, end_step: int, worker: int, workers: int) -> range:
    """The steps loader worker `worker` of `workers` builds, in order (the DataLoader interleaves them)."""
    return range(start_step + worker, end_step, workers)


def rank_slots(rank: int, batch_size: int) -> range:
    """The sample slots of a step's global batch that rank `rank` trains on."""
    return range(rank * batch_size, (rank + 1) * batch_size)


class TrainBatches(IterableDataset):
    """Yields collated batches for steps [start_step, end_step): dict with `step`, `slots` (of the step's global
    batch, as `rank_slots`), `case_ids`, `image` (B,1,Z,Y,X)
    float32 in [0, 1], `label` (B,1,Z,Y,X) uint8, and as needed `features` (B,C,Z,Y,X) (float16 when the spatial
    augmentation runs on the device: cast there), `mean`/`std` (B,C) and `spatial` (per-sample device transforms)."""

    def __init__(self, store: Any, spec: LoaderSpec, start_step: int, end_step: int):
        super().__init__()
        self.store = store
        self.spec = spec
        self.start_step = int(start_step)
        self.end_step = int(end_step)
        self.sampler = CropSampler(store, spec.case_ids, spec.crop_zyx, spec.fg_fraction)
        self.augmenter = Augmenter(prob=spec.aug_prob, allow_flips=spec.allow_flips)
        self._infos = {c.case_id: c for c in store.cases() if c.case_id in set(spec.case_ids)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for step in worker_steps(self.start_step, self.end_step, worker, workers):
            yield self.batch(step)

    def batch(self, step: int) -> dict[str, Any]:
        slots = list(rank_slots(self.spec.rank, self.spec.batch_size))
        samples = [self.sample(step, slot) for slot in slots]
        out: dict[str, Any] = {
            "step": step,
            "slots": slots,
            "case_ids": [s["case_id"] for s in samples],
            "image": torch.stack([s["image"] for s in samples]),
            "label": torch.stack([s["label"] for s in samples]),
        }
        if self.spec.read_features:
            out["features"] = torch.stack([s["features"] for s in samples])
        if self.spec.volume_stats:
            stats = [_stats(self._infos[s["case_id"]], s["view"]) for s in samples]
            out["mean"] = torch.tensor(np.stack([m for m, _ in stats]), dtype=torch.float32)
            out["std"] = torch.tensor(np.stack([sd for _, sd in stats]), dtype=torch.float32)
        if self.spec.views:
            out["views"] = torch.tensor([s["view"] for s in samples], dtype=torch.int64)
        if not self.spec.spatial_on_cpu:
            out["spatial"] = pack_spatial([s["params"].spatial for s in samples], self.spec.crop_zyx)
        return out

    def sample(self, step: int, slot: int) -> dict[str, Any]:
        rng = sample_rng(self.spec.seed, step, slot)
        choice = self.sampler.sample(rng)
        params = self.augmenter.sample(rng)
        params, view = choose_view(params, rng, self.spec.views)  # views: read one, no intensity transform on top
        device_path = not self.spec.spatial_on_cpu
        feat_dtype = np.float16 if device_path else np.float32
        crop = self.store.read_crop(choice.case_id, choice.start_zyx, self.spec.crop_zyx, dtype=feat_dtype,
                                    **({"view": view} if view else {}))
        data: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(crop["image"], dtype=np.float32)),
            "label": torch.from_numpy(np.ascontiguousarray(crop["label"])[None]),
        }
        if self.spec.read_features:
            data["features"] = torch.from_numpy(np.ascontiguousarray(crop["features"]))
        data = self.augmenter.apply(data, params, spatial=self.spec.spatial_on_cpu)
        data["case_id"] = choice.case_id
        data["params"] = params
        data["view"] = view
        return data


def _stats(info: Any, view: int) -> tuple[Any, Any]:
    """(feature mean, std) of the features a crop read: the case's, or those of its augmented view."""
    return (info.feature_mean, info.feature_std) if view == 0 else info.view_stats(view)


def _worker_init(worker_id: int) -> None:  # noqa: ARG001
    import atexit
    import gc
    import signal

    torch.set_num_threads(1)  # parallelism comes from the worker processes
    # Ctrl-C reaches the whole process group: the main process handles it and shuts the workers down (a worker
    # that died of it on its own could leave the main process waiting for its batch) ...
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # ... and waits for them to exit: a spawned worker skips the interpreter's final garbage collection (seconds)
    atexit.register(gc.freeze)


def _worker_start_method(store: Any) -> str:
    """fork where it is safe (fast start: no re-import of torch/monai per worker); spawn for the tensorstore backend,
    whose thread pools abort a process forked after they started, and where fork does not exist."""
    import multiprocessing

    if getattr(store, "backend", "zarr") == "tensorstore" or "fork" not in multiprocessing.get_all_start_methods():
        return "spawn"
    return "fork"


def make_loader(
    store: Any, spec: LoaderSpec, start_step: int, end_step: int, num_workers: int, pin_memory: bool
) -> DataLoader:
    """A DataLoader over `TrainBatches` (batches are built by the dataset: batch_size=None)."""
    dataset = TrainBatches(store, spec, start_step, end_step)
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        multiprocessing_context=_worker_start_method(store) if num_workers > 0 else None,
        prefetch_factor=2 if num_workers > 0 else None,
        persistent_workers=False,
        # a private generator: creating the iterator must not draw from the global torch RNG, whose state is
        # checkpointed (view masking draws from it) and must match between a resumed and an uninterrupted run
        generator=torch.Generator().manual_seed(spec.seed),
    )


def choose_train_cases(case_ids: Sequence[str], n_train: int | None, seed: int) -> tuple[str, ...]:
    """All train cases, or `n_train` of them chosen with the run seed (paper 4.1 few-shot), sorted."""
    ids = sorted(case_ids)
    if n_train is None:
        return tuple(ids)
    if n_train > len(ids):
        raise MaskgenError(f"--n-train {n_train} exceeds the {len(ids)} train cases of the store; use at most {len(ids)}.")
    rng = np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(2**31 - 1,)))
    return tuple(sorted(ids[i] for i in rng.choice(len(ids), size=n_train, replace=False)))
