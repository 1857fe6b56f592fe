"""Hooks into the per-worker training loop: parameter tracing for debugging a run
(``--trace-parameters``), and the interface tests inject faults through. They travel to the
workers pickled in ``train_loop_config``; the trainer calls ``setup`` once its model and
optimizer exist, ``before_step`` before every step (it may replace the batch) and ``close``
when the loop ends, however it ends.

    train(cfg, settings, hooks=[TraceParameters("trace/")])
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass


class Hook:
    """A no-op hook; subclasses override what they need."""

    def setup(self, trainer) -> None:
        pass

    def before_step(self, trainer, iteration: int, window):
        return window

    def close(self, trainer) -> None:
        pass


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
