"""A training run's settings and its folder: what a run reads, where it writes, and the names of
what it leaves there. The driver (which plans a run) and the trainer (which executes it on each
worker) both import this module; it imports no Ray.

A run lives in ``<storage>/<name>/`` (a path or s3://): ``checkpoint_<iteration>`` folders
(model.pt, train_state.pt, config.json and, last, checkpoint.json; see ``lmc.checkpoint`` and
``checkpoints``), ``lease.json`` while a job runs it (``lease``), ``tensorboard/``,
``metrics.json``, ``learning_curves.csv/.png``, ``curves_<protocol>.csv/.png`` and
``prediction.png/.gif``; Ray Train's own files (its snapshot of reported metrics) beside them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..config import ConfigError

METRICS_FILE = "metrics.json"
STRIP_NAME = "prediction"       # prediction.png / prediction.gif: input | truth | prediction
# Ray's placement-group strategies: PACK / SPREAD are best effort; STRICT_PACK puts every worker
# on one node, STRICT_SPREAD each worker on a node of its own.
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class StorageError(OSError):
    """The run's storage path cannot be reached or written."""


# channels_last: oneDNN's CPU forward convs run ~15% faster in it (the ConvLSTM gate conv of
# paper-mmnist at batch 2: 2.56 vs 2.97 ms); NHWC is also cuDNN's tensor-core layout.
MEMORY_FORMATS = ("channels_last", "contiguous")
AUTOCAST_MODES = ("none", "bf16")


@dataclass(frozen=True)
class RunSettings:
    """Where a run reads and writes and how it is scheduled (the model config is separate)."""

    data: str                        # shard folder (path or s3://) made by `pipeline.prepare`
    storage: str                     # run storage root (path or s3://); the run is <storage>/<name>
    name: str
    num_workers: int = 2
    use_gpu: bool = False            # NCCL on GPUs, gloo on CPU
    cpus_per_worker: float = 1.0     # CPUs Ray reserves per worker (lowered to leave Ray Data 1)
    placement_strategy: str = "PACK" # of the workers' placement group (Ray Train's ScalingConfig)
    threads_per_worker: int | None = None  # torch intra-op threads (None: max(1, cpus_per_worker))
    checkpoint_every: int | None = None    # checkpoint (rank 0) every K iterations and at the end
                                           # (None: a third of the run, at most 1000)
    eval_every: int | None = None    # validation every K iterations (None -> checkpoint interval)
    eval_windows: int = 32           # test windows per validation pass
    eval_batch_size: int = 8
    test_windows: int | None = None  # cap on the final test evaluation (None: the whole split)
    protocol: str | None = None      # "10-40", ...; None: the named protocol fitting the test windows
    max_failures: int = 3            # worker-group restarts from the latest checkpoint
    num_to_keep: int = 2             # checkpoints kept
    log_every: int | None = None     # loss history / TensorBoard interval (None: ~1000 points)
    autocast: str = "none"           # "none" | "bf16" (training steps; on CPU with AVX512-BF16/AMX)
    compile: bool = False            # torch.compile the model (GPU)
    memory_format: str = "channels_last"  # of the 2D conv weights and activations, or "contiguous"
    artifacts: bool = True           # per-timestep plot and prediction strip/GIF at the end

    def __post_init__(self):
        def need(ok, name, allowed):
            if not ok:
                raise ConfigError(f"run setting '{name}' = {getattr(self, name)!r} is invalid; "
                                  f"allowed: {allowed}")
        need(bool(self.name) and "/" not in self.name and not self.name.startswith("."),
             "name", "a non-empty folder name without '/'")
        need(isinstance(self.cpus_per_worker, (int, float)) and math.isfinite(self.cpus_per_worker)
             and self.cpus_per_worker > 0, "cpus_per_worker", "a finite number > 0")
        for n in ("num_workers", "eval_windows", "eval_batch_size"):
            need(isinstance(getattr(self, n), int) and getattr(self, n) >= 1, n, "an integer >= 1")
        for n in ("checkpoint_every", "eval_every", "test_windows", "log_every",
                  "threads_per_worker"):
            v = getattr(self, n)
            need(v is None or (isinstance(v, int) and v >= 1), n, "None or an integer >= 1")
        need(isinstance(self.max_failures, int) and self.max_failures >= -1, "max_failures",
             ">= 0, or -1 for unlimited")
        need(isinstance(self.num_to_keep, int) and self.num_to_keep >= 1, "num_to_keep", ">= 1")
        need(self.autocast in AUTOCAST_MODES, "autocast", " | ".join(AUTOCAST_MODES))
        need(self.memory_format in MEMORY_FORMATS, "memory_format", " | ".join(MEMORY_FORMATS))
        need(self.placement_strategy in PLACEMENT_STRATEGIES, "placement_strategy",
             " | ".join(PLACEMENT_STRATEGIES))

    # The cadences and the thread count, defaulted in one place.
    def checkpoint_interval(self, iterations: int) -> int:
        return self.checkpoint_every or max(1, min(1000, iterations // 3))

    def eval_interval(self, iterations: int) -> int:
        return self.eval_every or self.checkpoint_interval(iterations)

    def log_interval(self, iterations: int) -> int:
        return self.log_every or max(1, iterations // 1000)

    @property
    def torch_threads(self) -> int:
        return self.threads_per_worker or max(1, int(self.cpus_per_worker))


def storage_location(uri: str):
    """A local path or s3://bucket/prefix as a `pipeline.storage.Location` (S3 configured from
    the environment only; picklable, so workers rebuild it from the URI)."""
    from pipeline.storage import Location
    return Location.of(uri)


def latest_checkpoint(run) -> str | None:
    """The newest verified ``checkpoint_<iteration>`` folder of a run (relative name), or None
    (``checkpoints.RunCheckpoints.newest_verified``, which also says what it skipped)."""
    from .checkpoints import RunCheckpoints
    return RunCheckpoints(run).newest_verified().name


def read_json(loc, name: str) -> dict | None:
    try:
        return json.loads(loc.read_bytes(name)) if loc.exists(name) else None
    except Exception:
        return None


def s3_env(s: RunSettings) -> dict:
    """The driver's S3 settings when the run touches s3://: workers (possibly started before
    the driver set them, or on other nodes) read test windows and write the run folder."""
    from pipeline.storage import s3_environment
    return s3_environment() if "s3://" in s.data + s.storage else {}
