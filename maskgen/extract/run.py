"""`run_extract`: preprocess every case of a pipeline, run the frozen extractor once per case, fill the store.

Each case is one task that writes only its own group (`maskgen.store.writer.write_case`): with one worker the cases
run in dataset order in this process; with more they run in parallel on dask's local scheduler (`workers` threads or
processes) or on an existing dask.distributed cluster (`scheduler`). The extractor is built once in the calling
process (its fingerprint is checked against the store before anything is written) and rebuilt from that fingerprint
once per worker process, never per case. A case that fails (unreadable input, constant image, non-finite features,
full disk) is reported by name and left unmarked; the other cases go on, and the run fails at the end listing the
failed ones. Re-running skips complete cases whose inputs are unchanged, re-extracts those whose inputs changed
(`maskgen.extract.provenance`), updates re-read domains/splits in place, removes unfinished case folders and redoes
them. A full disk or an unwritable store at the start is one MaskgenError line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from maskgen.errors import MaskgenError, OptionError
from maskgen.store.layout import CODECS, DEFAULT_LAYOUT, FEATURE_DTYPES, StoreLayout, chunks_for_crop
from maskgen.store.lock import WriterLock
from maskgen.threads import reconfigure as reconfigure_threads, worker_threads

PARALLEL_CHOICES = ("processes", "threads")
#: Augmented views per train case when neither --views nor an existing store says. 0 by measurement
#: (`python -m benchmarks views`, README "Augmented feature views"): on the demo data stored views did not beat
#: cached clean features, in domain or out of domain, while online features did.
DEFAULT_VIEWS = 0
MAX_VIEWS = 64
DEVICE_CHOICES = ("cpu", "cuda")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything `maskgen extract` needs; saved into the store's root attributes (`extract_config`)."""

    dataset: str                                  # shipped pipeline name, path/to/pipeline.toml or an nnU-Net v2 folder
    fold: int | None = None                       # nnU-Net v2 datasets: fold of splits_final.json (None: 0)
    out: str | None = None                        # default: cache/<pipeline name>.zarr
    data_root: str | None = None                  # default: $MASKGEN_DATA_ROOT or the pipeline's default
    extractor: str = "auto"                       # a name of maskgen.extract.registry, `auto` or KIND:PATH
    weights: str | None = None
    layer: str | None = None                      # None: the extractor's default ("final" for anatomix)
    pad_multiple: int | None = None               # torchscript/onnx: spatial sizes padded to a multiple (16)
    dtype: str | None = None                      # "int8" | "float16"; None: the existing store's, else int8
    chunks: tuple[int, int, int] | None = None    # None: the existing store's, else chunks_for_crop(pipeline crop)
    codec: str | None = None                      # None: the existing store's, else "none"
    workers: int = 1
    # Local scheduler kind when workers > 1. Threads by measurement: 22 demo cases (95x110x97, mind, 2 shared cores)
    # took 13-17 s serial, 10-13 s with 2 threads and 24 s with 2 spawned processes (start-up and imports dominate;
    # torch, zlib and NumPy release the GIL). Processes suit large volumes on many cores.
    parallel: str = "threads"
    scheduler: str | None = None                  # address of a dask.distributed scheduler
    overwrite: bool = False
    redo: tuple[str, ...] = ()                    # case ids re-extracted even when complete (e.g. damaged ones)
    wait: bool = False                            # wait for another process's writer lock instead of exiting
    device: str = "cpu"
    allow_download: bool = True
    allow_constant: bool = False                  # extract images that are constant after preprocessing
    views: int | None = None                      # augmented views per train case; None: the existing store's,
                                                  # else DEFAULT_VIEWS (maskgen.extract.views)

    def __post_init__(self) -> None:
        """Each option checked once, as an OptionError naming the field (the CLI shows the flag)."""
        from maskgen.extract import registry

        if not self.dataset:
            raise OptionError("dataset", self.dataset, "is empty: give a shipped pipeline name or a file.toml")
        object.__setattr__(self, "redo", tuple(c.strip() for r in self.redo for c in str(r).split(",") if c.strip()))
        kind, _ = registry.parse_spec(self.extractor)
        if kind is not None:
            registry.check_options(kind, self.weights, self.layer, self.pad_multiple)
        if self.pad_multiple is not None and (isinstance(self.pad_multiple, bool)
                                              or not isinstance(self.pad_multiple, int) or self.pad_multiple < 1):
            raise OptionError("pad_multiple", self.pad_multiple, "must be an integer >= 1")
        checks = (
            ("dtype", self.dtype if self.dtype is not None else DEFAULT_LAYOUT.dtype, FEATURE_DTYPES),
            ("codec", self.codec if self.codec is not None else "none", CODECS),
            ("parallel", self.parallel, PARALLEL_CHOICES),
            ("device", self.device, DEVICE_CHOICES),
        )
        for name, value, choices in checks:
            if value not in choices:
                raise OptionError(name, value, f"is not one of {', '.join(choices)}")
        if self.fold is not None and (isinstance(self.fold, bool) or not isinstance(self.fold, int) or self.fold < 0):
            raise OptionError("fold", self.fold, "must be an integer >= 0")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise OptionError("workers", self.workers, "must be an integer >= 1")
        if self.views is not None and (isinstance(self.views, bool) or not isinstance(self.views, int)
                                       or not 0 <= self.views <= MAX_VIEWS):
            raise OptionError("views", self.views, f"must be an integer in 0..{MAX_VIEWS}")
        if self.chunks is not None:
            object.__setattr__(self, "chunks", tuple(int(c) for c in self.chunks))
            if len(self.chunks) != 3 or min(self.chunks) < 1:
                raise OptionError("chunks", self.chunks, "must be three positive integers (z, y, x)")

    def views_for(self, store_attrs: dict[str, Any] | None = None) -> int:
        """Augmented views per train case of this run: --views, else an existing store's (0 for stores made
        without), else DEFAULT_VIEWS."""
        from maskgen.store.views import store_view_count

        if self.views is not None:
            return self.views
        if store_attrs and not self.overwrite:
            return store_view_count(store_attrs)
        return DEFAULT_VIEWS

    @property
    def layout(self) -> StoreLayout:
        """The layout without a pipeline: the given chunks (default 64^3) and codec (default none)."""
        layout = DEFAULT_LAYOUT
        return StoreLayout(dtype=self.dtype or layout.dtype, chunks_zyx=self.chunks or layout.chunks_zyx,
                           codec=self.codec or layout.codec)

    def layout_for(self, pipeline: Any, store_attrs: dict[str, Any] | None = None) -> StoreLayout:
        """The layout of this run: unset dtype/chunks/codec follow an existing store (so re-runs resume it, stores
        made before int8 became the default included), else the dtype is int8, the chunks suit the pipeline's crop
        size (`chunks_for_crop`) and the codec is none. A given dtype that differs is refused by the store."""
        existing = None
        if store_attrs and not self.overwrite and store_attrs.get("layout"):
            existing = StoreLayout.from_attrs(store_attrs["layout"])
        if existing is not None:
            chunks = self.chunks or existing.chunks_zyx
            codec = self.codec or existing.codec
            same = chunks == existing.chunks_zyx and codec == existing.codec
            return StoreLayout(dtype=self.dtype or existing.dtype, chunks_zyx=chunks, codec=codec,
                               clevel=existing.clevel,
                               balance=existing.balance if same else True,
                               channel_chunk=existing.channel_chunk if same else 0,
                               shards_zyx=existing.shards_zyx if same else None)
        return StoreLayout(dtype=self.dtype or DEFAULT_LAYOUT.dtype,
                           chunks_zyx=self.chunks or chunks_for_crop(pipeline.crop_zyx),
                           codec=self.codec or DEFAULT_LAYOUT.codec)


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    error: str | None = None
    bytes_written: int = 0
    voxels: int = 0
    seconds: float = 0.0
    stage_s: dict = field(default_factory=dict, compare=False)   # seconds in load / extract / write

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ExtractSummary:
    store: Path | str          # a folder, or the URL of a remote store
    extractor: str
    cases_total: int
    cases_written: int
    cases_skipped: int
    failed: tuple[tuple[str, str], ...]
    seconds: float
    bytes_written: int
    voxels_written: int
    warnings: tuple[str, ...] = ()
    stale: tuple[tuple[str, str], ...] = ()       # (case_id, what changed): complete cases re-extracted
    updated: int = 0                              # complete cases whose domain/split/subject were re-read
    partial_removed: int = 0                      # unfinished case folders of earlier runs that were removed
    #: Busy seconds per stage summed over the cases (load = read + preprocess, extract = forward + statistics +
    #: cast, write); with one worker the stages overlap, so their sum exceeds the wall time when the pipeline works.
    stage_seconds: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def gb_written(self) -> float:
        return self.bytes_written / 1e9

    @property
    def bytes_per_voxel(self) -> float:
        return self.bytes_written / self.voxels_written if self.voxels_written else 0.0


class ExtractFailed(MaskgenError):
    """Some cases failed; the others are in the store. `summary` holds the details."""

    def __init__(self, message: str, summary: ExtractSummary):
        super().__init__(message)
        self.summary = summary


# ------------------------------------------------------------------------------------------- extractor per worker
@dataclass(frozen=True)
class ExtractorRef:
    """How a worker gets the extractor the calling process resolved: rebuilt from its fingerprint and the file it
    was loaded from (`maskgen.extract.registry.rebuild_extractor`: same features or an error, never a download)."""

    fingerprint: dict = field(hash=False, compare=False)
    weights_path: str | None
    device: str

    @property
    def key(self) -> tuple[str, str]:
        from maskgen.extract.registry import identity_key

        return identity_key(self.fingerprint), self.device


class _ExtractorCache:
    """The extractors of this process, one per (identity, device): built on first use by a worker, registered by
    the calling process for in-process workers (threads, a distributed cluster without processes)."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def get(self, ref: ExtractorRef) -> Any:
        with self._lock:
            extractor = self._items.get(ref.key)
            if extractor is None:
                from maskgen.extract.registry import rebuild_extractor

                extractor = rebuild_extractor(ref.fingerprint, weights=ref.weights_path, device=ref.device,
                                              purpose="an extraction worker needs the extractor of this run")
                self._items[ref.key] = extractor
            return extractor

    def put(self, ref: ExtractorRef, extractor: Any) -> None:
        with self._lock:
            self._items[ref.key] = extractor

    def drop(self, ref: ExtractorRef) -> None:
        with self._lock:
            self._items.pop(ref.key, None)


_WORKER_EXTRACTORS = _ExtractorCache()


def worker_extractor(ref: ExtractorRef) -> Any:
    """The extractor of this process (built on first use, then reused for every case)."""
    return _WORKER_EXTRACTORS.get(ref)


def _init_worker_process(torch_threads: int) -> None:
    """Initializer of local worker processes: share the cores, one zarr thread (set before zarr's first use)."""
    import torch
    import zarr

    torch.set_num_threads(max(1, torch_threads))
    zarr.config.set({"threading.max_workers": 1})


# ------------------------------------------------------------------------------------------- one case
@dataclass(frozen=True)
class CaseTask:
    store: str
    case: Any          # maskgen.data.layouts.Case
    pipeline: Any      # maskgen.data.pipeline.Pipeline
    extractor: ExtractorRef
    layout: StoreLayout = DEFAULT_LAYOUT
    allow_constant: bool = False
    views: int = 0             # augmented views to store (train cases only: maskgen.extract.views.wants_views)


def _reason(case_id: str, e: BaseException) -> str:
    text = str(e) or type(e).__name__
    prefix = f"case {case_id}: "
    return text[len(prefix):] if text.startswith(prefix) else text


@dataclass
class _Stage:
    """A case between the stages of `process_case` (preprocessed, then extracted)."""

    task: CaseTask
    t0: float
    image: Any                 # (1, Z, Y, X) float32
    label: Any                 # (Z, Y, X) uint8 or None
    attrs: dict[str, Any]
    features: Any = None       # once extracted: a CPU tensor, or StoreFeatures made on the accelerator
    views: list = field(default_factory=list)   # augmented views (maskgen.store.views.CaseView), train cases
    stage_s: dict[str, float] = field(default_factory=dict)   # seconds spent in load / extract / write

    def failed(self, message: str) -> CaseResult:
        return CaseResult(self.task.case.case_id, error=message, seconds=time.perf_counter() - self.t0,
                          stage_s=dict(self.stage_s))


def load_case(task: CaseTask) -> _Stage | CaseResult:
    """Record what the case is made from, then preprocess it (first stage of `process_case`)."""
    from maskgen.config import to_dict
    from maskgen.data.preprocess import preprocess_case
    from maskgen.extract.provenance import INPUTS_ATTR, inputs_record, listing_attrs

    case, t0 = task.case, time.perf_counter()
    cid = case.case_id
    try:
        inputs = inputs_record(case, task.pipeline)  # before the read: a later change is seen by the next run
        pre = preprocess_case(case, task.pipeline)
    except MaskgenError as e:
        return CaseResult(cid, error=f"cannot load: {_reason(cid, e)}", seconds=time.perf_counter() - t0)
    except Exception as e:  # nibabel/zlib/scipy errors on a corrupted file, unreadable files
        return CaseResult(cid, error=f"cannot load {case.image}: {type(e).__name__}: {e}",
                          seconds=time.perf_counter() - t0)
    attrs = {
        **listing_attrs(case),
        "spacing_zyx": [float(s) for s in pre.spacing_zyx],
        "geometry": to_dict(pre.geometry),
        "image_path": str(case.image),
        "label_path": None if case.label is None else str(case.label),
        "channel": case.channel,
        "normalization": pre.intensity,  # the rule this case got, its parameters and the input range it mapped
        INPUTS_ATTR: inputs,
    }
    stage = _Stage(task, t0, pre.image, pre.label, attrs, stage_s={"load": time.perf_counter() - t0})
    lo, hi = float(pre.image.min()), float(pre.image.max())
    if not task.allow_constant and not hi > lo:
        return stage.failed(f"the image {case.image} is constant after preprocessing (every voxel {lo:g}, "
                            f"normalisation {pre.intensity.get('rule')}): its features would carry no information. "
                            "Check the file, or pass --allow-constant to extract it anyway")
    return stage


def extract_case(stage: _Stage) -> _Stage | CaseResult:
    """Run the extractor of this process on the preprocessed image (second stage). On an accelerator the
    statistics and the float16 cast happen there (`store_features`: half the bytes cross to the host); on the CPU
    they are left to the write stage, off the thread that runs the forward."""
    from maskgen.extract.inference import extract_tensor, store_features
    from maskgen.extract.views import extract_views, wants_views

    t0 = time.perf_counter()
    try:
        extractor = worker_extractor(stage.task.extractor)
        out = extract_tensor(extractor, stage.image, device=stage.task.extractor.device)
        stage.features = out if out.device.type == "cpu" else store_features(out, stage.task.layout.dtype)
        if wants_views(stage.task.case, stage.task.views):
            stage.views = extract_views(extractor, stage.image, stage.task.case.case_id, stage.task.views,
                                        device=stage.task.extractor.device, dtype=stage.task.layout.dtype)
    except MaskgenError as e:
        return stage.failed(_reason(stage.task.case.case_id, e))
    except Exception as e:
        return stage.failed(f"feature extraction failed: {type(e).__name__}: {e}")
    finally:
        stage.stage_s["extract"] = time.perf_counter() - t0
    return stage


def write_stage(stage: _Stage) -> CaseResult:
    """Write the case group (third stage); a full disk or an unwritable store is named, the run goes on."""
    import numpy as np

    from maskgen.extract.inference import FLOAT16_MAX, StoreFeatures, store_features
    from maskgen.store.writer import write_case

    task, cid, t0 = stage.task, stage.task.case.case_id, time.perf_counter()
    label = None if stage.label is None else np.asarray(stage.label)
    feats = stage.features
    if not isinstance(feats, StoreFeatures):  # CPU features: statistics and cast here, off the forward's thread
        feats = store_features(feats, task.layout.dtype)
    if task.layout.dtype == "float16" and FLOAT16_MAX < feats.absmax < float("inf"):  # inf/NaN: the writer names it
        return stage.failed(f"features reach {feats.absmax:.3g}, beyond what float16 holds ({FLOAT16_MAX:g}); "
                            "use --dtype int8 (scaled per channel) for this extractor")
    try:
        nbytes = write_case(task.store, cid, image=stage.image, features=feats.values, label=label,
                            attrs=stage.attrs, layout=task.layout, stats=(feats.mean, feats.std), views=stage.views)
    except MaskgenError as e:
        return stage.failed(_reason(cid, e))
    except OSError as e:
        return stage.failed(os_error_message(task.store, e))
    except Exception as e:  # zarr/numcodecs errors: report the case, keep the run going
        return stage.failed(f"cannot write to {task.store}: {type(e).__name__}: {e}")
    finally:
        stage.stage_s["write"] = time.perf_counter() - t0
    voxels = int(np.prod(stage.image.shape[1:]))
    return CaseResult(cid, bytes_written=nbytes, voxels=voxels, seconds=time.perf_counter() - stage.t0,
                      stage_s=dict(stage.stage_s))


def process_case(task: CaseTask) -> CaseResult:
    """Preprocess, extract and write one case; failures come back as a CaseResult naming the problem."""
    stage = load_case(task)
    if isinstance(stage, _Stage):
        stage = extract_case(stage)
    return write_stage(stage) if isinstance(stage, _Stage) else stage


def os_error_message(store: Any, e: OSError) -> str:
    """One line for an OSError met while writing the store: full disk, no permission, not a folder, other."""
    where = e.filename or store
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"disk full ({os.strerror(e.errno)}) while writing {store}; free space on that disk (or choose "
                "another --out) and re-run the same command to resume")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot write to --out {store}: {os.strerror(e.errno)} ({where}); choose another --out or fix "
                "the folder's permissions")
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"cannot create the store {store}: {where} is in the way (not a folder); choose another --out"
    return f"cannot write to {store}: {type(e).__name__}: {e}"


# ------------------------------------------------------------------------------------------- scheduling
def run_pipelined(tasks: list[CaseTask], on_result: Callable[[CaseResult], None]) -> None:
    """The cases in dataset order in this process, as a bounded three-stage pipeline: while case k runs through
    the extractor (this thread), case k+1 is read and preprocessed (one reader thread) and case k-1 is written (one
    writer thread). At most one case waits at each stage, so memory stays at three cases; NIfTI decompression,
    resampling, zarr encoding and torch all release the GIL. Results come in dataset order."""
    from concurrent.futures import Future, ThreadPoolExecutor

    if not tasks:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="maskgen-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="maskgen-write") as writer:
        loading: Future = reader.submit(load_case, tasks[0])
        writing: Future | None = None
        for k in range(len(tasks)):
            stage = loading.result()
            if k + 1 < len(tasks):
                loading = reader.submit(load_case, tasks[k + 1])
            if isinstance(stage, _Stage):
                stage = extract_case(stage)
            if writing is not None:
                on_result(writing.result())
                writing = None
            if isinstance(stage, _Stage):
                writing = writer.submit(write_stage, stage)
            else:
                on_result(stage)
        if writing is not None:
            on_result(writing.result())


def _run_local(tasks: list[CaseTask], cfg: ExtractConfig, on_result: Callable[[CaseResult], None]) -> None:
    """One worker: `run_pipelined` in this process. More: dask's local threaded or process scheduler, each task one
    whole case (`process_case`)."""
    workers = min(cfg.workers, len(tasks))
    reconfigure_threads(0, parallel=workers if cfg.parallel == "threads" else 1)  # the command's thread policy
    if workers <= 1:
        run_pipelined(tasks, on_result)
        return

    import dask
    from dask.callbacks import Callback

    class _Report(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):  # noqa: ANN001 - dask's signature
            if isinstance(result, CaseResult):
                on_result(result)

    delayed = [dask.delayed(process_case, pure=False)(t, dask_key_name=f"case-{i}") for i, t in enumerate(tasks)]
    if cfg.parallel == "threads":
        with _Report():
            dask.compute(*delayed, scheduler="threads", num_workers=workers)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        torch_threads = worker_threads(workers)  # the available cores shared by the processes, or --threads
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker_process,
            initargs=(torch_threads,),
        ) as pool, _Report():
            dask.compute(*delayed, scheduler="processes", pool=pool, num_workers=workers)


SCHEDULER_CONNECT_TIMEOUT_S = 20.0


def connect(address: str) -> Any:
    """A dask.distributed Client for `address`; MaskgenError (before anything is written) if it cannot connect."""
    from distributed import Client

    try:
        return Client(address, timeout=SCHEDULER_CONNECT_TIMEOUT_S, set_as_default=False)
    except Exception as e:  # OSError / TimeoutError / ValueError for a bad address
        raise MaskgenError(f"cannot connect to the dask scheduler at {address}: {type(e).__name__}: {e}; start one "
                           "with `dask scheduler` (plus `dask worker ADDRESS`) or drop --scheduler") from None


def _run_distributed(tasks: list[CaseTask], client: Any, on_result: Callable[[CaseResult], None]) -> None:
    import uuid

    from distributed import as_completed

    run = uuid.uuid4().hex[:8]
    futures = {
        client.submit(process_case, t, key=f"maskgen-extract-{run}-{t.case.case_id}", pure=False): t.case.case_id
        for t in tasks
    }
    for fut in as_completed(list(futures), loop=client.loop):
        try:
            result = fut.result()
        except Exception as e:  # the worker died (KilledWorker) or could not run the task
            result = CaseResult(futures[fut], error=f"dask worker failed: {type(e).__name__}: {e}")
        on_result(result)


# ------------------------------------------------------------------------------------------- progress
def _progress(title: str, total: int, enabled: bool) -> Any:
    """Cases done / total, cases per minute, elapsed time and ETA on stderr (`maskgen.progress`: a bar on a
    terminal, plain lines elsewhere)."""
    from maskgen.progress import Progress

    return Progress(title, total, unit="case", rate="min", enabled=enabled)


# ------------------------------------------------------------------------------------------- entry point
def _note(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold yellow]Note:[/] {escape(message)}")


def default_out(pipeline_name: str) -> Path:
    return Path("cache") / f"{pipeline_name}.zarr"


@dataclass
class _Plan:
    """What a run works on, resolved before anything is written."""

    pipeline: Any
    out: Path | str
    cases: list
    existing: dict[str, Any] | None


def _plan(config: ExtractConfig) -> _Plan:
    """Pipeline, output store and cases; MaskgenError for an unusable --out (nothing written yet)."""
    from maskgen.data.layouts import discover_cases
    from maskgen.data.pipeline import load_pipeline
    from maskgen.store import meta

    from maskgen.store.location import as_location

    pipeline = load_pipeline(config.dataset, fold=config.fold)
    out = as_location(config.out) if config.out else default_out(pipeline.name)  # a folder or an fsspec URL
    cases = discover_cases(pipeline, config.data_root)
    for case in cases:
        meta.check_case_id(case.case_id)
    unknown = sorted(set(config.redo) - {c.case_id for c in cases})
    if unknown:
        raise MaskgenError(f"--redo {', '.join(unknown)}: no such case in {pipeline.name}; case ids look like "
                           f"{', '.join(c.case_id for c in cases[:3])}")
    existing = meta.read_root_attrs(out)
    problem = meta.not_a_store_problem(out)
    if problem:
        raise MaskgenError(problem)
    return _Plan(pipeline, out, cases, existing)


def _main_extractor(config: ExtractConfig) -> tuple[Any, tuple[str, ...]]:
    """The run's extractor, built in the calling process, and the warnings it gave (shown on stderr)."""
    from maskgen.extract.registry import build_extractor

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        extractor = build_extractor(config.extractor, config.weights, config.layer, config.device,
                                    allow_download=config.allow_download, pad_multiple=config.pad_multiple)
    notes = tuple(str(w.message) for w in caught)
    if notes:  # e.g. `--extractor auto` falling back to mind: say so visibly, whatever the warning filters
        from rich.console import Console
        from rich.markup import escape

        for note in notes:
            Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold yellow]Warning:[/] {escape(note)}")
    return extractor, notes


def _prepare(plan: _Plan, attrs: dict[str, Any], config: ExtractConfig) -> None:
    from maskgen.extract.registry import identity_problems
    from maskgen.store import writer

    writer.prepare_store(plan.out, attrs, overwrite=config.overwrite, extractor_problems=identity_problems)


@dataclass
class _Todo:
    tasks: list[CaseTask] = field(default_factory=list)
    skipped: int = 0
    stale: list[tuple[str, str]] = field(default_factory=list)
    updated: int = 0
    unchecked: int = 0
    partial_removed: int = 0


def _remove_partial(io: Any) -> int:
    """Delete every case folder not marked complete (interrupted or failed runs, cases since removed from the
    dataset): nothing reads them, and a redo starts from an empty folder."""
    from maskgen.store import meta, writer

    removed = 0
    for folder in sorted(meta.case_folders(io)):
        if meta.case_state(io, folder) != "complete":
            writer.delete_case(io, folder)
            removed += 1
    return removed


def _todo(plan: _Plan, ref: ExtractorRef, layout: StoreLayout, config: ExtractConfig) -> _Todo:
    """Which cases to (re)do: absent ones, `--redo` ones, and complete ones whose inputs changed (stale); complete
    ones whose domain/split/subject changed only get their record updated (`maskgen.extract.provenance`)."""
    from maskgen.extract.provenance import compare
    from maskgen.store import meta, writer
    from maskgen.store.kv import as_io

    io = as_io(plan.out)
    plan_ = _Todo(partial_removed=_remove_partial(io))
    from maskgen.store.layout import COMPLETE_ATTR

    folders = sorted(meta.case_folders(io)) if not config.overwrite else []
    recorded = {cid: a for cid, a in meta.read_many_case_attrs(io, folders).items() if a.get(COMPLETE_ATTR) is True}
    for case in plan.cases:
        cid = case.case_id
        attrs = recorded.get(cid)
        if attrs is not None and cid not in config.redo:
            diff = compare(case, plan.pipeline, attrs)
            plan_.unchecked += int(diff.unchecked)
            if not diff.stale:
                plan_.skipped += 1
                if diff.updates:
                    writer.update_case_attrs(io, cid, diff.updates)
                    plan_.updated += 1
                continue
            plan_.stale.append((cid, "; ".join(diff.stale)))
        if attrs is not None or config.overwrite:
            writer.delete_case(io, cid)
        plan_.tasks.append(CaseTask(str(plan.out), case, plan.pipeline, ref, layout, config.allow_constant,
                                    config.views_for(plan.existing)))
    return plan_


def _report_todo(todo: _Todo) -> None:
    """One line per stale case, one for updated records and one for records that cannot be checked."""
    for cid, why in todo.stale:
        _note(f"re-extracting case {cid}: {why}")
    if todo.partial_removed:
        _note(f"removed {todo.partial_removed} unfinished case folder(s) left by an interrupted or failed run")
    if todo.updated:
        _note(f"{todo.updated} complete case(s): domain/split/subject re-read from the dataset (their arrays do not "
              "depend on them; not re-extracted)")
    if todo.unchecked:
        _note(f"{todo.unchecked} complete case(s) were written by an older maskgen without a record of their input "
              "files: changes to those files cannot be detected; re-extract them with --redo CASE[,CASE] if needed")


def _execute(todo: list[CaseTask], config: ExtractConfig, client: Any, title: str, progress: bool,
             check: Callable[[], None] = lambda: None) -> list[CaseResult]:
    """Run the tasks (locally or on the cluster) under a progress bar; failures are printed as they come.
    `check()` runs after each case (the writer lock's: it raises when the lock was lost)."""
    from rich.markup import escape

    results: list[CaseResult] = []
    with _progress(title, len(todo), progress and bool(todo)) as bar:

        def on_result(res: CaseResult) -> None:
            check()
            results.append(res)
            if not res.ok and progress:
                bar.console.print(f"[bold red]failed[/] {res.case_id}: {escape(res.error or '')}", highlight=False)
            bar.update(advance=1)

        if todo:
            if client is not None:
                _run_distributed(todo, client, on_result)
            else:
                _run_local(todo, config, on_result)
    return results


def _summary(plan: _Plan, extractor_name: str, results: list[CaseResult], todo: _Todo, seconds: float,
             notes: tuple[str, ...]) -> ExtractSummary:
    done = [r for r in results if r.ok]
    return ExtractSummary(
        store=plan.out,
        extractor=extractor_name,
        cases_total=len(plan.cases),
        cases_written=len(done),
        cases_skipped=todo.skipped,
        failed=tuple(sorted((r.case_id, r.error or "") for r in results if not r.ok)),
        seconds=seconds,
        bytes_written=sum(r.bytes_written for r in done),
        voxels_written=sum(r.voxels for r in done),
        warnings=notes,
        stale=tuple(todo.stale),
        updated=todo.updated,
        partial_removed=todo.partial_removed,
        stage_seconds={k: sum(r.stage_s.get(k, 0.0) for r in results) for k in ("load", "extract", "write")},
    )


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[None]:
    """OSError while writing the store's own files -> MaskgenError with one line (`os_error_message`)."""
    try:
        yield
    except OSError as e:
        raise MaskgenError(os_error_message(out, e)) from None


def run_extract(config: ExtractConfig, progress: bool = True, raise_on_failure: bool = True) -> ExtractSummary:
    """Fill (or complete) the feature store described by `config`; see the module docstring.

    Raises MaskgenError before touching the store for configuration problems (unknown dataset, missing anatomix
    weights, a store made with other settings), and ExtractFailed at the end if any case failed (unless
    `raise_on_failure` is False, in which case the summary lists them).
    """
    from maskgen.config import to_dict
    from maskgen.extract.views import views_attr
    from maskgen.store import writer

    t_start = time.perf_counter()
    plan = _plan(config)
    # The extractor (and its fingerprint) comes first: a missing weights file stops here, before the store.
    extractor, notes = _main_extractor(config)
    fingerprint = extractor.fingerprint()
    ref = ExtractorRef(fingerprint, extractor.weights_path, config.device)
    layout = config.layout_for(plan.pipeline, plan.existing)
    attrs = writer.root_attributes(plan.pipeline, fingerprint, layout, extract_config=to_dict(config),
                                   views=views_attr(config.views_for(plan.existing)))
    client = connect(config.scheduler) if config.scheduler else None
    lock = WriterLock(plan.out, on_message=_note)
    try:
        with _writing(plan.out):  # a full disk or an unwritable --out at the start: one line, no traceback
            lock.acquire(wait=config.wait)  # one writer per store (`maskgen.store.lock`)
            _prepare(plan, attrs, config)
            todo = _todo(plan, ref, layout, config)
        _report_todo(todo)
        _WORKER_EXTRACTORS.put(ref, extractor)  # in-process workers (threads, distributed processes=False) reuse it
        title = f"extract {plan.pipeline.name} ({fingerprint.get('name')})"
        results = _execute(todo.tasks, config, client, title, progress, check=lock.check)
        with _writing(plan.out):
            writer.consolidate(plan.out)
    finally:
        lock.release()
        _WORKER_EXTRACTORS.drop(ref)
        if client is not None:
            client.close()
    summary = _summary(plan, str(fingerprint.get("name")), results, todo, time.perf_counter() - t_start, notes)
    if summary.failed and raise_on_failure:
        listing = "\n".join(f"  - {cid}: {why}" for cid, why in summary.failed)
        raise ExtractFailed(
            f"{len(summary.failed)} of {len(plan.cases)} case(s) failed; the other cases are complete in "
            f"{plan.out}:\n{listing}\nFix the cause and re-run the same command: complete cases are skipped.",
            summary,
        )
    return summary
