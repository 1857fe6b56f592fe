"""What every rank of a run agrees on at each step boundary: go on, stop (checkpoint and end:
the driver was asked to stop), abort (this job's lease is lost: end without writing), or fail
(a rank met a deterministic error: end, naming it, without retrying).

The same all-reduce carries rank 0's "poll": on its clock, every ``poll_every_s``, all ranks ask
Ray Train about preemptions at this step (``ray.train.get_preemption_info`` is a barrier of
its own, too slow for every step). One tiny all-reduce per step on a gloo group of its own (CPU; no GPU sync, ~0.1 ms on one
host), so a rank that cannot read its batch ends the run with the others instead of leaving
them waiting in DDP's all-reduce. Rank 0 contributes the lease's state from ``LeaseWatch``
(read by its thread, never on the step path).

``deterministic(e)``: the errors that would repeat if Ray Train restarted the worker group
(bad config, data, checkpoint or storage: a full disk, a permission, a corrupt file, a lost
lease, a non-finite loss). Worker and node deaths are not errors here: Ray retries those.
"""
from __future__ import annotations

import errno
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..alignment import NonFiniteLossError
from ..config import ConfigError
from ..reference import CheckpointError
from .lease import LeaseLost

_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}
_STORAGE_MESSAGES = ("No space left on device", "Disk quota exceeded", "Permission denied",
                     "Read-only file system", "AccessDenied", "Access Denied")


def deterministic(e: BaseException) -> bool:
    """Whether ``e`` would happen again on a retry (see the module docstring)."""
    from pipeline import DataError
    from .run_folder import StorageError
    if isinstance(e, (ConfigError, DataError, CheckpointError, StorageError, LeaseLost,
                      NonFiniteLossError)):
        return True
    if isinstance(e, OSError):
        return e.errno in _STORAGE_ERRNOS or any(m in str(e) for m in _STORAGE_MESSAGES)
    return False


def describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:600]


@dataclass
class Verdict:
    stop: str | None = None        # "SIGINT" / "SIGTERM": checkpoint at this boundary, then end
    abort: str | None = None       # the lease is lost: end without writing
    failure: str | None = None     # a rank's deterministic error: end, naming it
    poll: bool = False             # time to ask Ray Train about preemptions (every rank, now)
    checkpoint: bool = False       # checkpoint at this boundary: Ray Train is about to resize


class Control:
    def __init__(self, rank: int, world: int, watch=None, poll_every_s: float | None = None,
                 clock=time.monotonic, requests=None):
        self.rank, self.world, self.watch = rank, world, watch
        self.requests = requests        # rank 0's RequestWatch (elastic runs), or None
        self.group = dist.new_group(backend="gloo") if world > 1 else None
        # rank 0's clock says when every rank polls (a step count would drift with the pace)
        self.poll_every_s, self.clock = poll_every_s, clock
        self._last_poll = clock()

    def _poll_due(self) -> bool:
        if self.rank != 0 or self.poll_every_s is None:
            return False
        now = self.clock()
        if now - self._last_poll < self.poll_every_s:
            return False
        self._last_poll = now
        return True

    def agree(self, failure: str | None = None) -> Verdict:
        """Every rank's call returns the same verdict (a collective: call it on every rank at
        the same point). ``failure``: this rank's error message, if it met one."""
        stop = self.watch.stop if self.watch else None
        abort = self.watch.problem if self.watch else None
        asked = self.requests is not None and self.requests.pending is not None
        flags = torch.tensor([stop is not None, abort is not None, failure is not None,
                              self._poll_due(), asked], dtype=torch.int32)
        if self.group is not None:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)
        poll, checkpoint = bool(flags[3]), bool(flags[4])
        if not flags[:3].any():
            return Verdict(poll=poll, checkpoint=checkpoint)
        # rare: share the words (rank 0's lease state, every rank's failure)
        mine = {"stop": stop, "abort": abort, "failure": failure}
        everyone = [mine]
        if self.group is not None:
            everyone = [None] * self.world
            dist.all_gather_object(everyone, mine, group=self.group)
        failures = [f"rank {r}: {m['failure']}" if self.world > 1 else m["failure"]
                    for r, m in enumerate(everyone) if m["failure"]]
        return Verdict(stop=everyone[0]["stop"], abort=everyone[0]["abort"],
                       failure="; ".join(failures) or None, poll=poll, checkpoint=checkpoint)

    def close(self) -> None:
        if self.watch:
            self.watch.close()
        if self.requests:
            self.requests.close()


class RequestWatch:
    """Rank 0's side of the controller's checkpoint requests (``elastic.ElasticCallback``): a
    thread waits on ``requests`` (a queue; blocking gets, never on the step path) and holds
    the newest one in ``pending`` until ``answer`` puts the checkpoint's iteration on
    ``replies``."""

    def __init__(self, requests, replies):
        import threading
        self.requests, self.replies, self.pending = requests, replies, None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._wait, name="lmc-requests", daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        while not self._closed.is_set():
            try:
                self.pending = self.requests.get(timeout=1.0)
            except Exception:           # empty after the timeout, or the queue is gone
                self._closed.wait(0.5)

    def answer(self, iteration: int) -> None:
        request, self.pending = self.pending, None
        try:
            self.replies.put({"request": request, "iteration": iteration}, timeout=10)
        except Exception:               # the controller stopped waiting: it resizes anyway
            pass

    def close(self) -> None:
        self._closed.set()
