"""`run_extract`: preprocess every case of a pipeline, run the frozen extractor once per case, fill the store.

Each case is one task that writes only its own group (`maskgen.store.writer.write_case`): with one worker the cases
run in dataset order in this process; with more they run in parallel on dask's local scheduler (`workers` threads or
processes) or on an existing dask.distributed cluster (`scheduler`). The extractor is built once in the calling
process (its fingerprint is checked against the store before anything is written) and once per worker process,
never per case. A case that fails (unreadable input,
non-finite features, full disk) is reported by name and left unmarked; the other cases go on, and the run fails
at the end listing the failed ones. Re-running skips complete cases and redoes incomplete ones.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from maskgen.errors import MaskgenError
from maskgen.store.layout import CODECS, DEFAULT_LAYOUT, FEATURE_DTYPES, StoreLayout, chunks_for_crop
from maskgen.store.lock import WriterLock

EXTRACTOR_CHOICES = ("auto", "anatomix", "mind")
LAYER_CHOICES = ("final", "penultimate")
PARALLEL_CHOICES = ("processes", "threads")
DEVICE_CHOICES = ("cpu", "cuda")


@dataclass(frozen=True)
class ExtractConfig:
    """Everything `maskgen extract` needs; saved into the store's root attributes (`extract_config`)."""

    dataset: str                                  # shipped pipeline name or path/to/pipeline.toml
    out: str | None = None                        # default: cache/<pipeline name>.zarr
    data_root: str | None = None                  # default: $MASKGEN_DATA_ROOT or the pipeline's default
    extractor: str = "auto"
    weights: str | None = None
    layer: str = "final"
    dtype: str = DEFAULT_LAYOUT.dtype             # "float16" | "int8"
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

    def __post_init__(self) -> None:
        if not self.dataset:
            raise MaskgenError("ExtractConfig.dataset is empty: pass --dataset NAME or --dataset file.toml")
        checks = (
            ("extractor", self.extractor, EXTRACTOR_CHOICES),
            ("layer", self.layer, LAYER_CHOICES),
            ("dtype", self.dtype, FEATURE_DTYPES),
            ("codec", self.codec if self.codec is not None else "none", CODECS),
            ("parallel", self.parallel, PARALLEL_CHOICES),
            ("device", self.device, DEVICE_CHOICES),
        )
        for name, value, choices in checks:
            if value not in choices:
                raise MaskgenError(f"--{name} {value!r} is not one of {', '.join(choices)}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise MaskgenError(f"--workers must be an integer >= 1, got {self.workers!r}")
        object.__setattr__(self, "redo", tuple(str(c) for c in self.redo))
        if self.chunks is not None:
            object.__setattr__(self, "chunks", tuple(int(c) for c in self.chunks))
            if len(self.chunks) != 3 or min(self.chunks) < 1:
                raise MaskgenError(f"--chunks must be three positive integers (z, y, x), got {self.chunks!r}")

    @property
    def layout(self) -> StoreLayout:
        """The layout without a pipeline: the given chunks (default 64^3) and codec (default none)."""
        return StoreLayout(dtype=self.dtype, chunks_zyx=self.chunks or DEFAULT_LAYOUT.chunks_zyx,
                           codec=self.codec or DEFAULT_LAYOUT.codec)

    def layout_for(self, pipeline: Any, store_attrs: dict[str, Any] | None = None) -> StoreLayout:
        """The layout of this run: unset chunks/codec follow an existing store (so re-runs resume it), else the
        chunks suit the pipeline's crop size (`chunks_for_crop`) and the codec is none. The dtype is always this
        run's (a different dtype is refused by the store)."""
        existing = None
        if store_attrs and not self.overwrite and store_attrs.get("layout"):
            existing = StoreLayout.from_attrs(store_attrs["layout"])
        if existing is not None:
            chunks = self.chunks or existing.chunks_zyx
            codec = self.codec or existing.codec
            same = chunks == existing.chunks_zyx and codec == existing.codec
            return StoreLayout(dtype=self.dtype, chunks_zyx=chunks, codec=codec, clevel=existing.clevel,
                               balance=existing.balance if same else True,
                               channel_chunk=existing.channel_chunk if same else 0,
                               shards_zyx=existing.shards_zyx if same else None)
        return StoreLayout(dtype=self.dtype, chunks_zyx=self.chunks or chunks_for_crop(pipeline.crop_zyx),
                           codec=self.codec or DEFAULT_LAYOUT.codec)


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    error: str | None = None
    bytes_written: int = 0
    voxels: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ExtractSummary:
    store: Path
    extractor: str
    cases_total: int
    cases_written: int
    cases_skipped: int
    failed: tuple[tuple[str, str], ...]
    seconds: float
    bytes_written: int
    voxels_written: int
    warnings: tuple[str, ...] = ()

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
class ExtractorSpec:
    """How a worker rebuilds the extractor the calling process resolved (same arguments, no download)."""

    name: str
    weights: str | None
    layer: str
    device: str


_EXTRACTORS: dict[ExtractorSpec, Any] = {}
_EXTRACTORS_LOCK = threading.Lock()
BUILD_COUNT = {"n": 0}  # extractors built in this process (tests check: once per worker, not per case)


def _build(spec: ExtractorSpec, allow_download: bool) -> Any:
    from maskgen.extract.registry import build_extractor

    BUILD_COUNT["n"] += 1
    return build_extractor(spec.name, spec.weights, spec.layer, spec.device, allow_download=allow_download)


def worker_extractor(spec: ExtractorSpec, fingerprint: dict[str, Any]) -> Any:
    """The extractor of this process (built on first use), checked against the fingerprint recorded in the store."""
    with _EXTRACTORS_LOCK:
        extractor = _EXTRACTORS.get(spec)
        if extractor is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the calling process already showed any fallback warning
                extractor = _build(spec, allow_download=False)
            if extractor.fingerprint() != fingerprint:
                raise MaskgenError(
                    f"a worker built extractor {extractor.fingerprint().get('name')!r} "
                    f"(weights {extractor.fingerprint().get('weights_sha256')}) but the store expects "
                    f"{fingerprint.get('name')!r} (weights {fingerprint.get('weights_sha256')}); pass --weights PATH "
                    "explicitly so every worker loads the same file"
                )
            _EXTRACTORS[spec] = extractor
    return extractor


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
    spec: ExtractorSpec
    fingerprint: dict = field(hash=False)
    layout: StoreLayout = DEFAULT_LAYOUT


def _reason(case_id: str, e: BaseException) -> str:
    text = str(e) or type(e).__name__
    prefix = f"case {case_id}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def process_case(task: CaseTask) -> CaseResult:
    """Preprocess, extract and write one case; failures come back as a CaseResult naming the problem."""
    import numpy as np

    from maskgen.config import to_dict
    from maskgen.data.preprocess import preprocess_case
    from maskgen.extract.inference import extract_volume
    from maskgen.store.writer import write_case

    case = task.case
    cid = case.case_id
    t0 = time.perf_counter()

    def failed(message: str) -> CaseResult:
        return CaseResult(cid, error=message, seconds=time.perf_counter() - t0)

    try:
        pre = preprocess_case(case, task.pipeline)
    except MaskgenError as e:
        return failed(f"cannot load: {_reason(cid, e)}")
    except Exception as e:  # nibabel/zlib/scipy errors on a corrupted file
        return failed(f"cannot load {case.image}: {type(e).__name__}: {e}")
    try:
        extractor = worker_extractor(task.spec, task.fingerprint)
        features = extract_volume(extractor, pre.image, device=task.spec.device)
    except MaskgenError as e:
        return failed(_reason(cid, e))
    except Exception as e:
        return failed(f"feature extraction failed: {type(e).__name__}: {e}")
    attrs = {
        "domain": case.domain,
        "split": case.split,
        "spacing_zyx": [float(s) for s in pre.spacing_zyx],
        "geometry": to_dict(pre.geometry),
        "image_path": str(case.image),
        "label_path": None if case.label is None else str(case.label),
        "channel": case.channel,
        "subject": getattr(case, "subject_id", cid),
        "normalization": pre.intensity,  # the rule this case got, its parameters and the input range it mapped
    }
    label = None if pre.label is None else np.asarray(pre.label)
    try:
        nbytes = write_case(
            task.store, cid, image=pre.image, features=features, label=label, attrs=attrs, layout=task.layout
        )
    except MaskgenError as e:
        return failed(_reason(cid, e))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return failed(f"disk full ({os.strerror(e.errno)}) while writing {task.store}; free space and re-run the "
                          "same command to resume")
        return failed(f"cannot write to {task.store}: {type(e).__name__}: {e}")
    except Exception as e:  # zarr/numcodecs errors: report the case, keep the run going
        return failed(f"cannot write to {task.store}: {type(e).__name__}: {e}")
    voxels = int(np.prod(pre.image.shape[1:]))
    return CaseResult(cid, bytes_written=nbytes, voxels=voxels, seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------- scheduling
def _run_local(tasks: list[CaseTask], cfg: ExtractConfig, on_result: Callable[[CaseResult], None]) -> None:
    """One worker: the cases in dataset order in this process. More: dask's local threaded or process scheduler."""
    workers = min(cfg.workers, len(tasks))
    if workers <= 1:
        for task in tasks:
            on_result(process_case(task))
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

        torch_threads = max(1, (os.cpu_count() or 1) // workers)
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
def _progress(enabled: bool) -> Any:
    """A rich progress bar on stderr: cases done / total, cases per minute, elapsed time and ETA."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class CasesPerMinute(ProgressColumn):
        def render(self, task: Any) -> Text:
            elapsed = task.elapsed or 0.0
            if not task.completed or elapsed <= 0:
                return Text("-- cases/min", style="progress.data.speed")
            return Text(f"{task.completed / elapsed * 60:.1f} cases/min", style="progress.data.speed")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("cases"),
        CasesPerMinute(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


# ------------------------------------------------------------------------------------------- entry point
def _note(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold yellow]Note:[/] {escape(message)}")


def default_out(pipeline_name: str) -> Path:
    return Path("cache") / f"{pipeline_name}.zarr"


def run_extract(config: ExtractConfig, progress: bool = True, raise_on_failure: bool = True) -> ExtractSummary:
    """Fill (or complete) the feature store described by `config`; see the module docstring.

    Raises MaskgenError before touching the store for configuration problems (unknown dataset, missing anatomix
    weights, a store made with other settings), and ExtractFailed at the end if any case failed (unless
    `raise_on_failure` is False, in which case the summary lists them).
    """
    from maskgen.config import to_dict
    from maskgen.data.layouts import discover_cases
    from maskgen.data.pipeline import load_pipeline
    from maskgen.store import meta, writer

    t_start = time.perf_counter()
    pipeline = load_pipeline(config.dataset)
    out = Path(config.out) if config.out else default_out(pipeline.name)
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

    # The extractor (and its fingerprint) comes first: a missing weights file stops here, before the store.
    spec = ExtractorSpec(config.extractor, config.weights, config.layer, config.device)
    with _EXTRACTORS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        extractor = _build(spec, allow_download=config.allow_download)
    notes = tuple(str(w.message) for w in caught)
    if notes:  # e.g. `--extractor auto` falling back to mind: say so visibly, whatever the warning filters
        from rich.console import Console

        for note in notes:
            Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold yellow]Warning:[/] {note}")
    fingerprint = extractor.fingerprint()
    layout = config.layout_for(pipeline, existing)
    attrs = writer.root_attributes(pipeline, fingerprint, layout, extract_config=to_dict(config))
    client = connect(config.scheduler) if config.scheduler else None
    lock = WriterLock(out, on_message=_note)
    try:
        lock.acquire(wait=config.wait)  # one writer per store (`maskgen.store.lock`)
        with _EXTRACTORS_LOCK:
            _EXTRACTORS[spec] = extractor  # in-process workers (threads, distributed processes=False) reuse it
        writer.prepare_store(out, attrs, overwrite=config.overwrite)

        todo, skipped = [], 0
        for case in cases:
            state = meta.case_state(out, case.case_id)
            if state == "complete" and not config.overwrite and case.case_id not in config.redo:
                skipped += 1
                continue
            if state != "absent":
                writer.delete_case(out, case.case_id)  # partial group of an interrupted run
            todo.append(CaseTask(str(out), case, pipeline, spec, fingerprint, layout))

        results: list[CaseResult] = []
        with _progress(progress and bool(todo)) as bar:
            task_id = bar.add_task(f"extract {pipeline.name} ({fingerprint.get('name')})", total=len(todo))

            def on_result(res: CaseResult) -> None:
                lock.check()
                results.append(res)
                if not res.ok and progress:
                    bar.console.print(f"[bold red]failed[/] {res.case_id}: {res.error}", highlight=False)
                bar.advance(task_id)

            if todo:
                if client is not None:
                    _run_distributed(todo, client, on_result)
                else:
                    _run_local(todo, config, on_result)
        writer.consolidate(out)
    finally:
        lock.release()
        with _EXTRACTORS_LOCK:
            _EXTRACTORS.pop(spec, None)
        if client is not None:
            client.close()

    done = [r for r in results if r.ok]
    failed = tuple(sorted((r.case_id, r.error or "") for r in results if not r.ok))
    summary = ExtractSummary(
        store=out,
        extractor=str(fingerprint.get("name")),
        cases_total=len(cases),
        cases_written=len(done),
        cases_skipped=skipped,
        failed=failed,
        seconds=time.perf_counter() - t_start,
        bytes_written=sum(r.bytes_written for r in done),
        voxels_written=sum(r.voxels for r in done),
        warnings=notes,
    )
    if failed and raise_on_failure:
        listing = "\n".join(f"  - {cid}: {why}" for cid, why in failed)
        raise ExtractFailed(
            f"{len(failed)} of {len(cases)} case(s) failed; the other cases are complete in {out}:\n{listing}\n"
            "Fix the cause and re-run the same command: complete cases are skipped.",
            summary,
        )
    return summary
