"""Training crops read from a store on S3 against the same store on the local disk (issue 13.2).

The demo store (`--store` or the one `ensure_store` builds) is uploaded to an S3 server on 127.0.0.1 (moto's server,
`python -m moto.server`, started here; `--endpoint` uses another one, e.g. MinIO) and the same random training crops
(`FeatureStore.read_crop`: image + features + label, the pipeline's crop) are read, rounds interleaved and the order
rotated, through:
- `local-zarr`, `local-tensorstore`: the local folder (the reference);
- `s3-zarr`: zarr's FsspecStore with maskgen's s3fs options (one GET per chunk), the arrays of a crop fetched
  concurrently (`ZarrBackend.fetch`);
- `s3-zarr-serial`: the same, but the arrays of a crop fetched one after the other (what the reader did before);
- `s3-zarr-s3fs-defaults`: s3fs's own defaults (`max_concurrency=10`: a HEAD before every GET);
- `s3-tensorstore`: tensorstore's `s3` kvstore driver;
- `s3-cached`: zarr with maskgen's local chunk cache (`MASKGEN_CHUNK_CACHE`), warm (filled by the untimed first
  round; the first round's rate is reported as `cold`).
Ratios are medians of per-round ratios against `local-zarr` (a shared machine drifts); the load average is recorded.
moto is a single Python process: its per-request cost (not the network) bounds every S3 figure here.

    python -m benchmarks remote --rounds 5 --crops 20
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common


def start_moto() -> tuple[str, subprocess.Popen]:
    """moto's S3 server on a free port of 127.0.0.1 (the test suite's starter); (endpoint, process)."""
    from tests._s3 import MotoServer

    try:
        server = MotoServer.start()
    except RuntimeError as e:
        raise SystemExit(str(e)) from None
    return server.endpoint, server.proc


def upload(local: Path, endpoint: str) -> str:
    """Copy the store folder into a new bucket; its s3:// URL."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, endpoint_url=endpoint)
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    fs.put(str(local), f"{bucket}/{local.name}", recursive=True)
    return f"s3://{bucket}/{local.name}"


def crop_picks(store: Any, n: int, crop: tuple[int, ...], seed: int) -> list[tuple[str, tuple[int, ...]]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    cases = store.cases()
    picks = []
    for _ in range(n):
        info = cases[int(rng.integers(len(cases)))]
        picks.append((info.case_id, tuple(int(rng.integers(0, max(1, s - c + 1)))
                                          for s, c in zip(info.shape_zyx, crop))))
    return picks


def serial_reader(store: Any) -> Callable[[str, tuple[int, ...], tuple[int, ...]], Any]:
    """read_crop's store access with the arrays fetched one after the other (inside the volume only)."""
    def read(cid: str, start: tuple[int, ...], crop: tuple[int, ...]) -> Any:
        info = store.case(cid)
        src = tuple(slice(a, min(a + c, s)) for a, c, s in zip(start, crop, info.shape_zyx))
        names = ["image", "features"] + (["label"] if info.has_label else [])
        backend = store._zarr_backend()
        return [backend.fetch(cid, [(n, (slice(None),) * (n != "label") + src)]) for n in names]
    return read


def variants(local: Path, url: str, cache_dir: Path) -> dict[str, Callable[..., Any]]:
    from maskgen.store.chunk_cache import CacheSettings
    from maskgen.store.reader import FeatureStore
    from maskgen.store.tensorstore_backend import tensorstore_available

    out: dict[str, Callable[..., Any]] = {"local-zarr": FeatureStore(local, backend="zarr").read_crop}
    if tensorstore_available():
        out["local-tensorstore"] = FeatureStore(local, backend="tensorstore").read_crop
    out["s3-zarr"] = FeatureStore(url, backend="zarr", chunk_cache=False).read_crop
    out["s3-zarr-serial"] = serial_reader(FeatureStore(url, backend="zarr", chunk_cache=False))
    out["s3-zarr-s3fs-defaults"] = _with_s3fs_defaults(FeatureStore(url, backend="zarr", chunk_cache=False))
    if tensorstore_available():
        out["s3-tensorstore"] = FeatureStore(url, backend="tensorstore", chunk_cache=False).read_crop
    out["s3-cached"] = FeatureStore(url, backend="zarr",
                                    chunk_cache=CacheSettings(str(cache_dir), max_bytes=20 * 10**9)).read_crop
    return out


def _with_s3fs_defaults(store: Any) -> Callable[..., Any]:
    """read_crop of a store whose s3fs filesystem keeps s3fs's own options (fsspec configuration overrides
    maskgen's defaults: the same mechanism a user has)."""
    import fsspec.config

    fsspec.config.conf.setdefault("s3", {})["max_concurrency"] = 10
    try:
        store.io.store  # the filesystem is made now, with s3fs's default
    finally:
        fsspec.config.conf["s3"].pop("max_concurrency")
    return store.read_crop


def measure(fns: dict[str, Callable[..., Any]], picks: list[Any], crop: tuple[int, ...], rounds: int
            ) -> dict[str, list[float]]:
    """crops/s of each variant per round; round 0 (cold: opens arrays, fills the cache) is kept as `cold`."""
    names = list(fns)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + 1):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            for cid, start in picks:
                fns[name](cid, start, crop)
            rates[name].append(len(picks) / (time.perf_counter() - t0))
    return rates


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.parser(__doc__.split("\n\n")[0], "remote")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (after one cold round)")
    ap.add_argument("--crops", type=int, default=20, help="random crops per round (the same every round)")
    ap.add_argument("--crop", type=int, default=None, help="crop edge (default: the pipeline's)")
    ap.add_argument("--endpoint", default=None, help="an S3 endpoint to use instead of starting moto")
    args = ap.parse_args(argv)
    common.setup(args)

    from maskgen.store.reader import FeatureStore

    local = Path(common.ensure_store(args))
    endpoint, proc = (args.endpoint, None) if args.endpoint else start_moto()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    cache_dir = Path(tempfile.mkdtemp(prefix="chunk-cache-", dir=args.workdir))
    try:
        url = upload(local, endpoint)
        store = FeatureStore(local)
        crop = (args.crop,) * 3 if args.crop else tuple(int(c) for c in store.pipeline.crop_zyx)
        picks = crop_picks(store, args.crops, crop, args.seed)
        common.say(f"remote: {len(picks)} crops of {crop} per round, {args.rounds} rounds, store {url}")
        rates = measure(variants(local, url, cache_dir), picks, crop, args.rounds)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    base = rates["local-zarr"][1:]
    result = {
        "settings": {**common.settings(args, "rounds", "crops"), "crop_zyx": list(crop), "store": str(local),
                     "num_features": int(store.num_features), "server": "moto" if proc is not None else endpoint},
        "crops_per_s": {k: statistics.median(v[1:]) for k, v in rates.items()},
        "cold_crops_per_s": {k: v[0] for k, v in rates.items()},
        "ratio_to_local_zarr": {k: common.paired_ratio(v[1:], base) for k, v in rates.items()},
        "rounds": rates,
    }
    common.say("remote: " + ", ".join(f"{k} {v:.1f}/s ({result['ratio_to_local_zarr'][k]:.2f}x)"
                                      for k, v in result["crops_per_s"].items()))
    return common.record("remote", result, args.results)


if __name__ == "__main__":
    main()
