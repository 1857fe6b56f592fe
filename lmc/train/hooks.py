"""Hooks into the per-worker training loop: fault injection and parameter tracing, for tests and
for debugging a run. They travel to the workers pickled in ``train_loop_config``; the trainer
calls ``setup`` once its model and optimizer exist, ``before_step`` before every step (it may
replace the batch) and ``close`` when the loop ends, however it ends.

    train(cfg, settings, hooks=[CrashAt(rank=1, iteration=3, marker="/tmp/crashed")])
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass


class Hook:
    """A no-op hook; subclasses override what they need."""

    def setup(self, trainer) -> None:
        pass

    def before_step(self, trainer, iteration: int, window):
        return window

    def close(self, trainer) -> None:
        pass


@dataclass
class CrashAt(Hook):
    """The process of ``rank`` dies (``os._exit``) at ``iteration``, once: ``marker`` records
    it, so the restarted worker group goes on."""

    rank: int
    iteration: int
    marker: str
    after_s: float = 0.0   # Ray Train registers a reported checkpoint when it next polls the
                           # workers (every 2 s): wait so that the last one surely is

    def before_step(self, trainer, iteration, window):
        if trainer.rank == self.rank and iteration == self.iteration and not os.path.exists(self.marker):
            time.sleep(self.after_s)
            with open(self.marker, "w") as f:
                f.write(f"rank {trainer.rank} died at iteration {iteration}\n")
            os._exit(1)
        return window


@dataclass
class NaNInputAt(Hook):
    """The batch of ``iteration`` becomes NaN (a non-finite loss follows)."""

    iteration: int

    def before_step(self, trainer, iteration, window):
        return window * float("nan") if iteration == self.iteration else window


def _digest(params) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _parts(core) -> dict[str, list]:
    parts = {"all": list(core.parameters())}
    if core.has_memory:
        parts.update(memory=[core.memory.slots],
                     e_lmc=list(core.motion_context_encoder.parameters()),
                     e_mm=list(core.motion_matching_encoder.parameters()))
    return parts


@dataclass
class TraceParameters(Hook):
    """Hashes of the parameters (all, memory, E_LMC, E_MM) before every step and after every
    optimizer step (phase 1, phase 2), saved as ``<out_dir>/rank<r>-start<i>.json``."""

    out_dir: str

    def setup(self, trainer):
        self.core, self.records = trainer.core, []
        self.path = os.path.join(self.out_dir, f"rank{trainer.rank}-start{trainer.start}.json")
        trainer.align.optimizer.register_step_post_hook(self._after_optimizer_step)

    def before_step(self, trainer, iteration, window):
        self._record(iteration, 0)
        return window

    def _after_optimizer_step(self, *_):
        last = self.records[-1]
        self._record(last["iteration"], 1 if last["phase"] != 1 else 2)

    def _record(self, iteration, phase):
        self.records.append({"iteration": iteration, "phase": phase,
                             **{k: _digest(v) for k, v in _parts(self.core).items()}})

    def close(self, trainer):
        os.makedirs(self.out_dir, exist_ok=True)
        with open(self.path, "w") as f:
            json.dump(self.records, f)
