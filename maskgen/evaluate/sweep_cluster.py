"""A sweep on a dask.distributed cluster: one task per variant, results gathered as they finish.

`run_on_cluster(run_variant, spec, variants, "tcp://host:8786", status, on_done)` connects to a running scheduler
and submits `maskgen.evaluate.sweep.run_variant(spec, variant)` for every variant. When any worker declares a `GPU` resource
(`dask worker ... --resources GPU=1`), every task asks for one (`resources={"GPU": 1}`), so each GPU trains one
variant at a time and CPU-only workers get none; when no worker declares it, the tasks run on the CPU workers.
The client polls the scheduler about once a second for what is running where (`SweepStatus.set_running`) and
rewrites the results after every finished variant.

Failures: a variant that raises (a bad option, a non-finite loss) is reported as failed and the others go on. A
worker that dies (killed, out of memory, machine lost) is noticed by the scheduler, which hands its task to another
worker (up to `distributed.scheduler.allowed-failures` times); `run_variant` then finds the variant's `last.pt` and
continues from it. Every worker must see the store and the sweep folder at the same paths (a shared file system).
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Sequence

POLL_S = 1.0
KEY_PREFIX = "maskgen-sweep"


def gpu_resources(client: Any) -> dict[str, int] | None:
    """{"GPU": 1} when at least one worker declares a GPU resource, else None (run on any worker)."""
    workers = client.scheduler_info().get("workers", {})
    return {"GPU": 1} if any("GPU" in (w.get("resources") or {}) for w in workers.values()) else None


def run_on_cluster(task: Callable[..., Any], spec: Any, variants: Sequence[Any], address: str, status: Any,
                   on_done: Callable[[], None], log: Callable[[str], None] | None = None) -> None:
    """Run `task(spec, variant)` (`maskgen.evaluate.sweep.run_variant`) for every variant as a dask task on the
    scheduler at `address`; outcomes and failures go to `status`, `on_done()` after each (rewrite the results)."""
    from distributed import wait

    from maskgen.extract.run import connect

    say = log or (lambda _msg: None)
    client = connect(address)
    try:
        resources = gpu_resources(client)
        n_workers = len(client.scheduler_info().get("workers", {}))
        say(f"dask scheduler {address}: {n_workers} worker(s); each variant asks for "
            + ("one GPU" if resources else "one task slot (no worker declares a GPU resource: CPU workers)"))
        token = uuid.uuid4().hex[:8]
        futures = {client.submit(task, spec, v, key=f"{KEY_PREFIX}-{token}-{v.name}", resources=resources,
                                 pure=False, retries=0): v.name for v in variants}
        by_key = {f.key: name for f, name in futures.items()}
        pending = set(futures)
        while pending:
            try:
                finished, pending = wait(list(pending), timeout=POLL_S, return_when="FIRST_COMPLETED")
                pending = set(pending)
            except TimeoutError:
                finished = set()
            status.set_running(_running(client, by_key))
            for fut in finished:
                _collect(fut, futures[fut], status, say)
                on_done()
    finally:
        client.close()


def _running(client: Any, by_key: dict[str, str]) -> dict[str, str]:
    """{variant name: worker address} for this sweep's tasks that workers are processing now."""
    running = {}
    for worker, keys in client.processing().items():
        for key in keys:
            if key in by_key:
                running[by_key[key]] = worker
    return running


def _collect(fut: Any, name: str, status: Any, say: Callable[[str], None]) -> None:
    try:
        outcome = fut.result()
    except Exception as e:  # the task raised, or its workers kept dying (KilledWorker)
        status.failed_with(name, f"{type(e).__name__}: {e}")
        say(f"{name}: failed: {type(e).__name__}: {e}")
        return
    status.finished(outcome)
    how = {"skipped": "finished earlier, skipped", "trained": "trained and evaluated",
           "resumed": f"continued from step {outcome.from_step} and evaluated"}[outcome.action]
    say(f"{name}: {how} on {outcome.where} ({outcome.seconds:.0f} s)")
    for note in outcome.notes:
        say(f"{name}: {note}")
