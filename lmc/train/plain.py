"""The training loop in one plain process, no Ray: the same ``loop.Loop`` as under Ray Train,
with a context of rank 0 of 1, no DDP, and training windows drawn from the train split read
with pyarrow. For tests, notebooks and ``benchmarks/learning_parity.py``.

    from lmc.train.plain import train_plain
    outcome, reports = train_plain(cfg, RunSettings(data=..., storage="runs", name="plain"))

The run folder is the same as a Ray run's (verified checkpoints, metrics.json, pictures), and a
second call resumes from its newest verified checkpoint. Batches: iteration i's is ``batch_size``
windows drawn without replacement from the whole split by a generator seeded with (config seed,
i), so a run resumed from a checkpoint takes exactly the steps the uninterrupted run took.
"""
from __future__ import annotations

import itertools
import socket
import uuid

import numpy as np
import torch

from .finish import finish_run
from .loop import Loop, WorkerContext


def train_windows(data: str, cfg) -> torch.Tensor:
    """The whole train split as one float tensor (N, short_len + out_len, C, H, W)."""
    import pipeline
    return torch.cat([b["window"] for b in pipeline.iter_test_windows(
        data, batch_size=64, split="train", short_len=cfg.short_len, out_len=cfg.out_len)])


def plain_context(data: str, cfg, device: str | torch.device = "cpu",
                  reports: list | None = None) -> WorkerContext:
    windows = train_windows(data, cfg)

    def open_batches(batch_size: int, start: int):
        for iteration in itertools.count(start):     # batch i depends on i only: resumable
            rng = np.random.default_rng([cfg.seed, iteration])
            yield windows[torch.from_numpy(rng.choice(len(windows), batch_size, replace=False))]

    return WorkerContext(rank=0, world=1, device=torch.device(device),
                         node_id=socket.gethostname(), wrap_model=lambda core: core.to(device),
                         open_batches=open_batches,
                         report=(reports if reports is not None else []).append)


def train_plain(cfg, settings, protocol=None, *, hooks=(), device="cpu") -> tuple[dict, list]:
    """Algorithm 1 on ``settings.data`` into ``<storage>/<name>`` in this process:
    (the outcome, every report). ``protocol``: the test protocol (default: the shards')."""
    import pipeline
    from ..protocols import protocol_for
    from .run_folder import storage_location

    if protocol is None:
        protocol = protocol_for(cfg.short_len, pipeline.DatasetFacts.read(settings.data).test_out_len)
    run = storage_location(settings.storage).child(settings.name)
    run.makedirs()
    reports: list = []
    loop = Loop(cfg, settings, protocol, run.uri, plain_context(settings.data, cfg, device, reports),
                hooks, submission=uuid.uuid4().hex)
    outcome = loop.fit()
    if outcome["status"] == "finished":
        finish_run(loop)
    return outcome, reports
