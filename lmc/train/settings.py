"""A training run's settings: where it reads and writes and how it is scheduled (the model
config, ``lmc.config.LMCConfig``, is separate). The driver (which plans a run) and the trainer
(which executes it on each worker) both import this module; it imports no Ray.

Each field is one flag of the training jobs (``lmc.cli.add_settings_flags``): ``--<field name
with dashes>``, or the metadata's "flag" where the user-facing name differs from the field's
(``--gpus``, ``--keep-checkpoints``: the fields keep Ray's names, ``ScalingConfig.use_gpu`` and
``CheckpointConfig.num_to_keep``); its help, choices and what None means ("when_none") come from
the metadata too. The defaults live here only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config import ConfigError, validator

# Ray's placement-group strategies: PACK / SPREAD are best effort; STRICT_PACK puts every worker
# on one node, STRICT_SPREAD each worker on a node of its own.
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
# channels_last: oneDNN's CPU forward convs run ~15% faster in it (the ConvLSTM gate conv of
# paper-mmnist at batch 2: 2.56 vs 2.97 ms); NHWC is also cuDNN's tensor-core layout.
MEMORY_FORMATS = ("channels_last", "contiguous")
AUTOCAST_MODES = ("none", "bf16")


def parse_workers(text: str) -> int | tuple[int, int]:
    """``--num-workers``: "4" -> 4; "2-8" -> (2, 8), an elastic range."""
    lo, sep, hi = str(text).partition("-")
    try:
        if not sep:
            return int(lo)
        lo, hi = int(lo), int(hi)
    except ValueError:
        raise ConfigError(f"--num-workers {text!r}: allowed: a number of workers (4) or an "
                          "elastic range MIN-MAX (2-8)") from None
    if not 1 <= lo <= hi:
        raise ConfigError(f"--num-workers {text!r}: an elastic range MIN-MAX needs "
                          "1 <= MIN <= MAX")
    return lo, hi


@dataclass(frozen=True)
class RunSettings:
    """Where a run reads and writes and how it is scheduled (the model config is separate)."""

    data: str = field(metadata={
        "help": "clip-pair shards (path or s3://) from jobs/prepare_*.py"})
    storage: str = field(metadata={
        "help": "run storage root (path or s3://); the run is <storage>/<name>"})
    name: str = field(metadata={"help": "run name; the same name and storage resume the run"})
    num_workers: int = field(default=2, metadata={
        "parse": parse_workers, "metavar": "N|MIN-MAX",
        "help": "Ray Train workers (DDP ranks); MIN-MAX (e.g. 2-8) is elastic: the run starts "
                "with as many as the cluster holds (at least MIN), goes on with fewer when "
                "nodes are lost or preempted and grows back as nodes join (the global batch "
                "stays --batch-size)"})
    # Elastic: the fewest workers the run goes on with (``num_workers`` is then the most);
    # None: exactly ``num_workers``. Set through --num-workers MIN-MAX, not a flag of its own.
    min_workers: int | None = field(default=None, metadata={"flag": None})
    use_gpu: bool = field(default=False, metadata={
        "flag": "gpus", "help": "one GPU per worker (NCCL; gloo on CPUs)"})
    cpus_per_worker: float = field(default=1.0, metadata={
        "help": "CPUs Ray reserves per worker (lowered on a small cluster to leave Ray Data 1)"})
    placement_strategy: str = field(default="PACK", metadata={
        "choices": PLACEMENT_STRATEGIES,
        "help": "where the workers go: PACK (few nodes), SPREAD (many), STRICT_SPREAD (one "
                "node each), STRICT_PACK (one node)"})
    threads_per_worker: int | None = field(default=None, metadata={
        "help": "torch intra-op threads per worker", "when_none": "max(1, cpus_per_worker)"})
    checkpoint_every: int | None = field(default=None, metadata={
        "help": "iterations between checkpoints, and one at the end",
        "when_none": "a third of the run, at most 1000"})
    eval_every: int | None = field(default=None, metadata={
        "help": "iterations between validations", "when_none": "the checkpoint interval"})
    eval_windows: int = field(default=32, metadata={"help": "test windows per validation"})
    eval_batch_size: int = field(default=8, metadata={"help": "batch size of the validations"})
    test_windows: int | None = field(default=None, metadata={
        "help": "cap on the final test evaluation", "when_none": "the whole test split"})
    protocol: str | None = field(default=None, metadata={
        "help": "evaluation protocol, e.g. 10-40",
        "when_none": "the named protocol that fits the test windows"})
    max_failures: int = field(default=3, metadata={
        "help": "worker-group restarts after a worker or node dies, from the newest checkpoint "
                "(-1: unlimited; deterministic errors: data, checkpoint, config, storage, are "
                "never retried; preemptions count against --max-preemptions)"})
    max_preemptions: int = field(default=-1, metadata={
        "help": "worker-group restarts after a node drained for preemption (a spot reclaim) is "
                "gone, from its just-in-time checkpoint (-1: unlimited)"})
    resize_check_s: float = field(default=60.0, metadata={
        "help": "elastic runs: seconds between Ray Train's checks whether more workers fit "
                "(growing restarts the workers from the newest checkpoint)"})
    num_to_keep: int = field(default=2, metadata={
        "flag": "keep-checkpoints", "help": "verified checkpoints kept"})
    log_every: int | None = field(default=None, metadata={
        "help": "iterations between loss-history and TensorBoard points",
        "when_none": "~1000 points per run"})
    autocast: str = field(default="none", metadata={
        "choices": AUTOCAST_MODES,
        "help": "bf16 autocast for the training steps: GPUs, or CPUs with AVX512-BF16 or AMX "
                "(1.65x here); elsewhere bf16 is emulated and slower"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model (GPU)"})
    memory_format: str = field(default="channels_last", metadata={
        "choices": MEMORY_FORMATS,
        "help": "layout of the 2D convs' weights and activations (channels_last: the faster "
                "one on CPU and on tensor cores)"})
    artifacts: bool = field(default=True, metadata={
        "help": "per-timestep plot and prediction strip/GIF at the end"})

    def __post_init__(self):
        if isinstance(self.num_workers, tuple):           # --num-workers MIN-MAX
            lo, hi = self.num_workers
            object.__setattr__(self, "num_workers", hi)
            object.__setattr__(self, "min_workers", lo if lo != hi else None)
        need = validator("run setting", self)
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
        need(self.min_workers is None or (isinstance(self.min_workers, int)
                                          and 1 <= self.min_workers <= self.num_workers),
             "min_workers", f"None or an integer from 1 to num_workers = {self.num_workers}")
        for n in ("max_failures", "max_preemptions"):
            need(isinstance(getattr(self, n), int) and getattr(self, n) >= -1, n,
                 ">= 0, or -1 for unlimited")
        need(isinstance(self.resize_check_s, (int, float)) and math.isfinite(self.resize_check_s)
             and self.resize_check_s >= 0, "resize_check_s", "a finite number of seconds >= 0")
        need(isinstance(self.num_to_keep, int) and self.num_to_keep >= 1, "num_to_keep", ">= 1")
        need(self.autocast in AUTOCAST_MODES, "autocast", " | ".join(AUTOCAST_MODES))
        need(self.memory_format in MEMORY_FORMATS, "memory_format", " | ".join(MEMORY_FORMATS))
        need(self.placement_strategy in PLACEMENT_STRATEGIES, "placement_strategy",
             " | ".join(PLACEMENT_STRATEGIES))

    @property
    def elastic(self) -> bool:
        return self.min_workers is not None

    @property
    def workers(self) -> str:
        """--num-workers as the user wrote it: "4", or "2-8" for an elastic run."""
        return f"{self.min_workers}-{self.num_workers}" if self.elastic else str(self.num_workers)

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
