"""Ctrl-C while training: stop within a moment and keep a checkpoint the run can continue from (`--resume`).

`InterruptGuard` lets SIGINT raise KeyboardInterrupt at once, as Python does, except inside the optimiser's update
(between its pre- and post-step hooks), where it is held until the update is complete: the weights and the optimiser
state therefore always correspond to a whole number of steps. It is also held while the loop takes the next batch
(`guard.held()`): an exception raised in the middle of the DataLoader's queue and lock handling can leave a lock
taken, and the shutdown of the workers would then wait for it forever. `interrupted(run, guard)` then writes last.pt at that
step (with the RNG state of that step boundary; in a data-parallel run, whose ranks stop at different points, the
last checkpoint written is kept) and returns the one-line KeyboardInterrupt for the CLI (exit 130).
A second Ctrl-C during the update raises at once. Outside the main thread (a notebook's worker thread, a dask task)
or where SIGINT is ignored, nothing is installed and Python's behaviour is unchanged.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

from maskgen.train.checkpoint import rng_state, set_rng_state, write_checkpoint


class InterruptGuard:
    def __init__(self, optimizer: Any):
        self.optimizer = optimizer
        self.updates = 0                 # optimiser updates completed while the guard was active
        self.in_update = False
        self.holding = False
        self.pending = False             # a Ctrl-C arrived during an update: raised when it completes
        self.requested = False           # a Ctrl-C arrived at all
        self.rng: dict[str, Any] | None = None   # the global RNG state after the last completed update
        self._previous: Any = None
        self._hooks: list[Any] = []

    def __enter__(self) -> "InterruptGuard":
        self._hooks = [self.optimizer.register_step_pre_hook(self._pre),
                       self.optimizer.register_step_post_hook(self._post)]
        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGINT)
            if current not in (signal.SIG_IGN, None):
                self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _pre(self, *_args: Any) -> None:
        self.in_update = True

    def _post(self, *_args: Any) -> None:
        self.in_update = False
        self.updates += 1
        self.rng = rng_state()
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Ctrl-C inside the block is raised when it ends; so is one that was lost earlier (see `_on_sigint`)."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending or self.requested:
            self.pending = False
            raise KeyboardInterrupt

    def _on_sigint(self, signum: int, frame: Any) -> None:
        # Python runs this between any two bytecodes of the main thread, also inside a __del__ or a weakref callback
        # that the garbage collector calls, where the KeyboardInterrupt would be printed and dropped: `requested`
        # remembers it, and the loop raises it at the next batch.
        self.requested = True
        if (self.in_update or self.holding) and not self.pending:
            self.pending = True
            return
        raise KeyboardInterrupt

    @property
    def consistent(self) -> bool:
        """False only when an exception (a second Ctrl-C) left the last update half done."""
        return not self.in_update


def interrupted(run: Any, guard: InterruptGuard, start_step: int) -> KeyboardInterrupt:
    """After a KeyboardInterrupt in the loop (which started at `start_step`): last.pt at the last whole step when
    that is newer than the one on disk; the message says what is kept."""
    last = run.dir / "last.pt"
    several = bool(getattr(getattr(run, "dist", None), "active", False))  # DDP: no collective now; keep the last
    if guard.consistent and guard.updates and not several:
        run.step = start_step + guard.updates
        if guard.rng is not None:
            set_rng_state(guard.rng)  # the state at that step boundary (the next step's forward may have drawn)
        if run.step > run.last_saved:
            write_checkpoint(run, "last.pt", None)
    if run.last_saved > 0:
        kept = f"{last} is at step {run.last_saved}"
    else:
        kept = "no checkpoint was written yet"
    return KeyboardInterrupt(f"Interrupted at step {run.step} of {run.cfg.steps}: {kept}. Continue with the same "
                             "command plus --resume.")
