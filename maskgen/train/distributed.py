"""Data-parallel training on several devices: torch DistributedDataParallel, launched by torchrun.

`torchrun --nproc-per-node N -m maskgen train ...` (or `maskgen train --nproc N`, which calls torchrun's own
launcher, `torch.distributed.run`) starts N processes; each reads its rank from torchrun's environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and `init_distributed` joins the process group: NCCL on CUDA (device
cuda:LOCAL_RANK), gloo on the CPU, with a timeout on every collective (`--dist-timeout`) so that the other ranks exit
with an error when one dies or hangs instead of waiting forever. Without torchrun's variables nothing is initialised
and `Dist()` is the single process (rank 0 of 1): every helper below is then a no-op.

Contracts (the call sites in setup.py, loop.py, step.py, validate.py):
- The model is replicated (`Dist.wrap`: DDP averages the gradients; `--sync-bn`: SyncBatchNorm, CUDA only); the
  parameters are identical on every rank after every step. BatchNorm running statistics are each rank's own between
  steps (DDP broadcasts rank 0's at every forward); `sync_buffers` copies rank 0's before validating, so every rank
  validates the model rank 0 checkpoints.
- Data: the global batch of a step has world_size x batch_size slots; rank r trains on slots [r B, (r + 1) B)
  (`maskgen.train.loader.rank_slots`); every crop, augmentation and view mask of a slot comes from a stream of
  (run seed, step, slot), so a run replays exactly for a given world size, and N ranks with batch B see the same
  samples as one process with batch N x B.
- Only rank 0 writes (config.json, metrics.jsonl, checkpoints, plots: `on_main`, which re-raises rank 0's error on
  every rank); validation cases are split across ranks (`shard`) and their Dice gathered (`gather`).
- A non-finite loss on any rank stops every rank (`mean_loss` gathers every rank's loss before the update).
- Debugging: with MASKGEN_DDP_TRACE=<folder> every rank appends "step sha256-of-its-parameters" to
  <folder>/rank<r>.txt after every step (`trace`), so desynchronised replicas show at the step they part.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from maskgen.errors import MaskgenError

TRACE_ENV = "MASKGEN_DDP_TRACE"
DEFAULT_TIMEOUT_S = 900.0
_RANK_STREAM = 0x72616E6B  # spawn key of the per-rank torch seed ("rank")


class Dist:
    """This process's place among the data-parallel processes (rank 0 of 1 when not launched by torchrun)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, active: bool = False):
        self.rank, self.world_size, self.local_rank, self.active = int(rank), int(world_size), int(local_rank), active
        # processes on this machine (torchrun's LOCAL_WORLD_SIZE): they share its CPUs for loader workers
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size)) if active else 1
        self.nonfinite_ranks: list[int] = []   # ranks whose loss was non-finite at the last `mean_loss`
        trace = os.environ.get(TRACE_ENV) if active else None
        self.trace_file = Path(trace) / f"rank{self.rank}.txt" if trace else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: cuda:LOCAL_RANK for CUDA (one GPU per process), else `device`."""
        return torch.device("cuda", self.local_rank) if self.active and device.type == "cuda" else device

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def shard(self, items: Sequence[Any]) -> list[Any]:
        """This rank's share of `items`: every world_size-th item from its rank."""
        return list(items[self.rank :: self.world_size])

    def on_main(self, fn: Callable[[], Any]) -> None:
        """Run `fn` on rank 0 only (the writes); an error there is raised on every rank, so none waits for a rank
        that stopped. Also a barrier: every rank leaves once rank 0 is done."""
        error, message = None, None
        if self.is_main:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks were told
                error, message = e, str(e) if isinstance(e, MaskgenError) else f"rank 0 failed: {e!r}"
        if self.active:
            box = [message]
            torch.distributed.broadcast_object_list(box, src=0)
            message = box[0]
        if error is not None:
            raise error
        if message is not None:
            raise MaskgenError(message)

    def mean_loss(self, loss: torch.Tensor) -> float:
        """The mean over ranks of each rank's (mean) loss: the loss of the global batch. Non-finite when any rank's
        is (`nonfinite_ranks` says which), so that every rank skips the update together."""
        if not self.active:
            return float(loss.detach())
        mine = loss.detach().float().reshape(1)
        values = [torch.empty_like(mine) for _ in range(self.world_size)]
        torch.distributed.all_gather(values, mine)
        losses = torch.cat(values).cpu().tolist()
        self.nonfinite_ranks = [r for r, v in enumerate(losses) if not np.isfinite(v)]
        return losses[self.nonfinite_ranks[0]] if self.nonfinite_ranks else float(np.mean(losses))

    def where(self) -> str:
        """" on rank(s) [..] of N" after a non-finite `mean_loss` (empty for a single process)."""
        return f" on rank(s) {self.nonfinite_ranks} of {self.world_size}" if self.active else ""

    def wrap(self, model: torch.nn.Module, sync_bn: bool) -> torch.nn.Module:
        """The module to train: `model` itself for one process, else DDP around it (parameters broadcast from rank
        0); `sync_bn` converts its BatchNorm layers to SyncBatchNorm (batch statistics over all ranks; CUDA only)."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        if sync_bn:
            if device.type != "cuda":
                raise MaskgenError("--sync-bn needs CUDA devices (torch's SyncBatchNorm runs on GPUs only); drop "
                                   "--sync-bn to train on the CPU.")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
        if self.active:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def torch_seed(self, seed: int) -> int:
        """The seed of this rank's torch global RNG (which serves only nn.Dropout3d): the run seed on rank 0, a
        stream of (seed, rank) elsewhere, so ranks draw different dropout masks."""
        if self.rank == 0:
            return int(seed)
        ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(_RANK_STREAM, self.rank))
        return int(ss.generate_state(1, np.uint64)[0] & (2**63 - 1))

    def trace(self, step: int, model: torch.nn.Module) -> None:
        """With MASKGEN_DDP_TRACE set: append "step sha256(parameters)" to this rank's trace file."""
        if self.trace_file is None:
            return
        digest = hashlib.sha256()
        for p in model.parameters():
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
        with open(self.trace_file, "a") as f:
            f.write(f"{step} {digest.hexdigest()}\n")


def launched() -> bool:
    """Was this process started by torchrun (or another launcher that sets its variables)?"""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


@contextlib.contextmanager
def distributed(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Dist]:
    """The process group of a torchrun launch for training on `device` (the resolved --device), left when the
    block ends; `Dist()` without torchrun. A process group the caller already made is used and left to it."""
    if not launched():
        yield Dist()
        return
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    own = not torch.distributed.is_initialized()
    if own:
        if device.type == "cuda":
            if local >= torch.cuda.device_count():
                raise MaskgenError(f"rank {rank}: LOCAL_RANK {local} but PyTorch sees {torch.cuda.device_count()} "
                                   "CUDA devices; launch at most one process per GPU (--nproc / --nproc-per-node).")
            torch.cuda.set_device(local)
        torch.distributed.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=float(timeout_s))
        )
    try:
        yield Dist(rank, world, local, active=True)
    except RuntimeError as e:
        if not collective_failure(e):
            raise
        raise MaskgenError(
            f"rank {rank} of {world}: a collective with the other training processes failed ({e}). Another rank "
            f"stopped or stopped answering (timeout {timeout_s:g} s, --dist-timeout); its own message says why."
        ) from None
    finally:
        if own and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def collective_failure(error: BaseException) -> bool:
    """Is `error` a failed collective (timeout, a peer that closed its connection)? Gloo raises plain
    RuntimeErrors naming itself; NCCL and c10d raise DistError."""
    text = str(error)
    return isinstance(error, torch.distributed.DistError) or any(
        word in text for word in ("gloo", "NCCL", "ProcessGroup", "Connection closed by peer", "Timed out waiting")
    )


def launch(args: list[str], nproc: int) -> None:
    """`maskgen train --nproc N`: run `maskgen <args>` in N processes on this machine with torchrun's launcher
    (torch.distributed.run, standalone rendezvous on a free local port), as `torchrun --standalone
    --nproc-per-node N -m maskgen <args>` would. A failed rank is a MaskgenError naming it (its message is above)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(["--standalone", "--nproc-per-node", str(int(nproc)), "-m", "maskgen", *args])
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise MaskgenError(
            f"training process rank {rank} of {nproc} exited with code {failure.exitcode}; its message is above "
            "(the other ranks were stopped)."
        ) from None
