"""Fault injection for the Ray Train tests: ``lmc.train.hooks.Hook``s that kill a worker or
poison a batch at a given iteration.

    train(cfg, settings, hooks=[CrashAt(rank=1, iteration=3, marker="/tmp/crashed")])

The hooks travel to the Ray Train workers pickled in ``train_loop_config``; the workers cannot
import a module under tests/, so this module is pickled by value (its classes' code goes with
the objects).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import ray

from lmc.train.hooks import Hook

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class CrashAt(Hook):
    """The process of ``rank`` dies (``os._exit``) at ``iteration``, once: ``marker`` records
    it, so the restarted worker group goes on."""

    rank: int
    iteration: int
    marker: str
    after_s: float = 0.0   # seconds to wait before dying

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
