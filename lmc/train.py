"""Ray Train driver: Algorithm 1 under DDP on a `TorchTrainer`, with checkpoints, resume,
validation, TensorBoard logs and a final test evaluation.

    import lmc
    from lmc.train import RunSettings, train
    metrics = train(lmc.preset("tiny"), RunSettings(data="data/kth-shards",
                                                    storage="runs", name="tiny-kth"))

`train` validates everything first (config, shards vs config, storage, an existing run's
checkpoint vs the architecture), each problem one clear error, and only then starts Ray work.
A run lives in `<storage>/<name>/`: Ray Train's `checkpoint_<iteration>` folders (model.pt,
train_state.pt, config.json; see `lmc.checkpoint`), `tensorboard/`, `metrics.json`, and the
plots. Submitting the same name and storage again resumes from its latest checkpoint (Ray Train
V2 restores a run from its storage folder); a worker failure restarts the worker group from the
latest checkpoint up to `max_failures` times.

`batch_size` in the config is the global batch: each of the N workers takes batch_size / N.
This module (and `lmc.tune`) is where Ray lives; the model code stays plain PyTorch.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field

import torch

from .alignment import NonFiniteLossError
from .checkpoint import CONFIG_FILE, MODEL_FILE
from .config import ConfigError, LMCConfig
from .evaluate import protocol_for
from .metrics import Protocol
from .model import LMCModel
from .reference import CheckpointError, load_matching

METRICS_FILE, ERROR_FILE = "metrics.json", "error.json"
STRIP_NAME = "prediction"       # prediction.png / prediction.gif: input | truth | prediction
CHECKPOINT_PREFIX = "checkpoint_"


class DataError(ValueError):
    """The shards cannot feed this model (missing, empty, or made for other lengths/sizes)."""


class StorageError(OSError):
    """The run's storage path cannot be reached or written."""


@dataclass(frozen=True)
class RunSettings:
    """Where a run reads and writes and how it is scheduled (the model config is separate)."""

    data: str                        # shard folder (path or s3://) made by `pipeline.prepare`
    storage: str                     # run storage root (path or s3://); the run is <storage>/<name>
    name: str
    num_workers: int = 2
    use_gpu: bool = False            # NCCL on GPUs, gloo on CPU
    cpus_per_worker: float = 1.0     # CPUs Ray reserves per worker (lowered to leave Ray Data 1)
    threads_per_worker: int | None = None  # torch intra-op threads (None: max(1, cpus_per_worker))
    checkpoint_every: int = 100      # K: checkpoint (rank 0) every K iterations, and at the end
    eval_every: int | None = None    # validation every K iterations (None -> checkpoint_every)
    eval_windows: int = 32           # test windows per validation pass
    eval_batch_size: int = 8
    test_windows: int | None = None  # cap on the final test evaluation (None: the whole split)
    protocol: str | None = None      # "10-40", ...; None: the named protocol fitting the test windows
    max_failures: int = 3            # worker-group restarts from the latest checkpoint
    num_to_keep: int = 2             # checkpoints kept
    log_every: int | None = None     # loss history / TensorBoard interval (None: ~1000 points)
    autocast: str = "none"           # "none" | "bf16" (GPU)
    compile: bool = False            # torch.compile the model (GPU)
    artifacts: bool = True           # per-timestep plot and prediction strip/GIF at the end
    debug: dict = field(default_factory=dict)  # test hooks: crash / nan_at / trace_dir

    def __post_init__(self):
        def need(ok, name, allowed):
            if not ok:
                raise ConfigError(f"run setting '{name}' = {getattr(self, name)!r} is invalid; "
                                  f"allowed: {allowed}")
        need(bool(self.name) and "/" not in self.name and not self.name.startswith("."),
             "name", "a non-empty folder name without '/'")
        need(isinstance(self.cpus_per_worker, (int, float)) and self.cpus_per_worker > 0,
             "cpus_per_worker", "a number > 0")
        for n in ("num_workers", "checkpoint_every", "eval_windows",
                  "eval_batch_size"):
            need(isinstance(getattr(self, n), int) and getattr(self, n) >= 1, n, "an integer >= 1")
        for n in ("eval_every", "test_windows", "log_every", "threads_per_worker"):
            v = getattr(self, n)
            need(v is None or (isinstance(v, int) and v >= 1), n, "None or an integer >= 1")
        need(isinstance(self.max_failures, int) and self.max_failures >= -1, "max_failures",
             ">= 0, or -1 for unlimited")
        need(isinstance(self.num_to_keep, int) and self.num_to_keep >= 1, "num_to_keep", ">= 1")
        need(self.autocast in ("none", "bf16"), "autocast", "none | bf16")


# ----------------------------------------------------------------------------------------------
# Validation: everything that can be checked before Ray starts


@dataclass
class Plan:
    """What `validate` found: the run folder, the manifest and the evaluation protocol."""
    run_uri: str
    storage_root: str
    manifest: dict
    protocol: Protocol
    resume_from: str | None          # latest checkpoint folder of an existing run, if any


def storage_location(uri: str):
    """A local path or s3://bucket/prefix as a `pipeline.storage.Location` (S3 configured from
    the environment only; picklable, so workers rebuild it from the URI)."""
    from pipeline.storage import Location
    return Location.of(uri)


def _check_data(cfg: LMCConfig, s: RunSettings) -> tuple[dict, Protocol]:
    import pipeline
    try:
        manifest = pipeline.read_manifest(s.data)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(f"--data {s.data}: {e}") from None
    rows = manifest.get("rows", {})
    for split in ("train", "test"):
        if not rows.get(split):
            raise DataError(f"--data {s.data}: the {split!r} split is empty (0 windows); see "
                            f"{s.data}/errors.jsonl for skipped inputs")
    loc = storage_location(s.data)
    missing = [sh["path"] for sh in manifest.get("shards", []) if not loc.exists(sh["path"])]
    if missing:
        raise DataError(f"--data {s.data}: {len(missing)} shard file(s) listed in manifest.json "
                        f"are missing (e.g. {missing[0]}); prepare the data again")
    mc = manifest["config"]
    test_out = mc.get("test_out_len") or mc["out_len"]
    problems = []
    for key, want in (("short_len", cfg.short_len), ("img_size", cfg.img_size),
                      ("channels", cfg.channels)):
        if mc[key] != want:
            problems.append(f"{key}: shards {mc[key]} vs model {want}")
    if mc["out_len"] < cfg.out_len:
        problems.append(f"out_len: shards {mc['out_len']} < model {cfg.out_len} (train windows "
                        f"of {mc['short_len'] + mc['out_len']} frames cannot hold "
                        f"short_len + out_len = {cfg.window_len})")
    if problems:
        raise DataError(f"--data {s.data} was prepared for another model config: "
                        + "; ".join(problems) + ". Prepare shards with the model's lengths and "
                        "image size, or change the config to match the shards.")
    try:
        protocol = protocol_for(cfg.short_len, test_out, s.protocol)
    except ValueError as e:
        raise DataError(f"--data {s.data}: {e}") from None
    return manifest, protocol


def _check_storage(s: RunSettings):
    try:
        root = storage_location(s.storage)
        run = root.child(s.name)
        run.makedirs()
        probe = f".probe-{os.getpid()}-{time.time_ns()}"
        run.write_bytes(b"ok", probe)
        run.delete(probe)
    except (OSError, ValueError) as e:  # pyarrow raises OSError subclasses for I/O failures
        raise StorageError(f"--storage {s.storage}: cannot create or write {s.storage}/{s.name} "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                           "check the path, bucket, endpoint and credentials") from None
    return root, run


def latest_checkpoint(run) -> str | None:
    """The newest `checkpoint_<iteration>` folder of a run (relative name), or None."""
    try:
        names = {f.split("/", 1)[0] for f in run.list_files() if f.startswith(CHECKPOINT_PREFIX)
                 and f.endswith("/" + CONFIG_FILE)}
    except Exception:
        return None
    return max(names) if names else None


def _check_resume(cfg: LMCConfig, run, name: str | None) -> None:
    """An existing run's checkpoint must belong to this architecture (keys listed if not)."""
    if name is None:
        return
    local, tmp = run.fetch(name, MODEL_FILE)
    try:
        state = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{run.uri}/{name}/{MODEL_FILE} is corrupt "
                              f"({type(e).__name__}); delete the folder or use another --name") from None
    finally:
        if tmp:
            os.remove(local)
    try:
        load_matching(LMCModel(cfg), state, f"checkpoint {run.uri}/{name}")
    except CheckpointError as e:
        raise CheckpointError(f"{e}\nThe run {run.uri} was trained with another architecture; "
                              "use another --name (or storage) or the run's own config.") from None


def validate(cfg: LMCConfig, s: RunSettings) -> Plan:
    """Every check that can run before Ray: one clear error each."""
    if not isinstance(cfg, LMCConfig):
        raise ConfigError(f"expected an LMCConfig, got {type(cfg).__name__}")
    if cfg.batch_size % s.num_workers:
        raise ConfigError(f"config field 'batch_size' = {cfg.batch_size} is invalid; allowed: a "
                          f"multiple of num_workers = {s.num_workers} (it is the global batch)")
    if s.use_gpu is False and s.autocast != "none":
        raise ConfigError("run setting 'autocast' = 'bf16' needs --gpus (off on CPU)")
    manifest, protocol = _check_data(cfg, s)
    root, run = _check_storage(s)
    resume = latest_checkpoint(run)
    _check_resume(cfg, run, resume)
    return Plan(run.uri, root.root, manifest, protocol, resume)


# ----------------------------------------------------------------------------------------------
# The driver


def train(cfg: LMCConfig, settings: RunSettings, *, callbacks: list | None = None,
          verbose: bool = True) -> dict:
    """Validate, then run Algorithm 1 on a Ray Train `TorchTrainer`; returns metrics.json.

    ``callbacks``: Ray Train callbacks for the `RunConfig` (Ray Tune passes its
    `TuneReportCallback` so each trial is one such run).

    Connects to the cluster in RAY_ADDRESS (as under `ray job submit`) or starts a local one.
    Raises `ConfigError`, `DataError`, `StorageError` or `CheckpointError` before any Ray work,
    `NonFiniteLossError` when a loss is NaN/inf, `RuntimeError` when workers keep failing.
    """
    plan = validate(cfg, settings)
    if verbose:
        print(f"run {plan.run_uri}: {'resuming from ' + plan.resume_from if plan.resume_from else 'new run'}"
              f"; data {settings.data} ({plan.manifest['rows']['train']} train / "
              f"{plan.manifest['rows']['test']} test windows); protocol {plan.protocol.name}")
    run = storage_location(plan.run_uri)
    run.delete(ERROR_FILE)

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .train_worker import train_loop_per_worker

    if not ray.is_initialized():
        ray.init(configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    settings = _leave_cpu_for_data(settings, verbose)
    storage = storage_location(settings.storage)
    run_config = RunConfig(
        name=settings.name,
        storage_path=storage.root,
        storage_filesystem=None if storage.is_local else storage.fs,
        failure_config=FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=settings.num_to_keep),
        callbacks=callbacks,
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"model": cfg.to_dict(), "run": dataclasses.asdict(settings),
                           "run_uri": plan.run_uri, "protocol": dataclasses.asdict(plan.protocol),
                           "s3_env": _s3_env(settings)},
        scaling_config=ScalingConfig(num_workers=settings.num_workers, use_gpu=settings.use_gpu,
                                     resources_per_worker={"CPU": settings.cpus_per_worker}),
        run_config=run_config,
        datasets={"train": _train_dataset(settings.data, plan.manifest)},
    )
    try:
        trainer.fit()
    except Exception as e:
        fatal = _read_json(run, ERROR_FILE)
        if fatal:
            raise NonFiniteLossError(fatal["message"]) from None
        raise RuntimeError(f"training run {plan.run_uri} failed: {_worker_error(e)}") from e
    fatal = _read_json(run, ERROR_FILE)
    if fatal:
        raise NonFiniteLossError(fatal["message"])
    metrics = _read_json(run, METRICS_FILE)
    if metrics is None:
        raise RuntimeError(f"training run {plan.run_uri} ended without writing {METRICS_FILE}")
    if verbose:
        _print_summary(metrics)
    return metrics


def _train_dataset(data: str, manifest: dict):
    """The train split as a Ray Dataset; small ones are read once into the object store, so
    every epoch's split does not read and decode the Parquet files again."""
    import pipeline
    ds = pipeline.load_split(data, "train")
    return ds.materialize() if manifest.get("bytes", {}).get("train", 1 << 62) < 1 << 30 else ds


def _leave_cpu_for_data(s: RunSettings, verbose: bool) -> RunSettings:
    """Ray Data's read tasks need a CPU too: on a small cluster where the workers would take
    every CPU the shard reading would wait forever, so reserve less per worker (the torch
    thread count stays as it was)."""
    import ray
    total = ray.cluster_resources().get("CPU", 0)
    if s.use_gpu or total - s.num_workers * s.cpus_per_worker >= 1 or total <= 1:
        return s
    cpw = max(0.1, (total - 1) / s.num_workers)
    if verbose:
        print(f"reserving {cpw:.2f} CPU per worker (not {s.cpus_per_worker}) so that Ray Data "
              f"keeps 1 of the cluster's {total:g} CPUs for reading shards")
    threads = s.threads_per_worker or max(1, int(s.cpus_per_worker))
    return dataclasses.replace(s, cpus_per_worker=cpw, threads_per_worker=threads)


def _worker_error(e: BaseException) -> str:
    """The first worker's own exception out of Ray Train's wrappers."""
    failures = getattr(e, "worker_failures", None)
    if failures:
        rank, err = sorted(failures.items())[0]
        base = getattr(err, "_base_exc", err)
        return f"rank {rank}: {type(base).__name__}: {str(base).strip().splitlines()[-1][:500]}"
    return f"{type(e).__name__}: {str(e).strip()[:500]}"


def _read_json(loc, name: str) -> dict | None:
    try:
        return json.loads(loc.read_bytes(name)) if loc.exists(name) else None
    except Exception:
        return None


def _print_summary(m: dict) -> None:
    hist = m.get("loss_history") or []
    if hist:
        first, last = hist[0], hist[-1]
        print(f"loss (phase 1 + phase 2): iteration {first['iteration']}: "
              f"{first['loss_phase1'] + first['loss_phase2']:.4f} -> iteration "
              f"{last['iteration']}: {last['loss_phase1'] + last['loss_phase2']:.4f}")
    t = m.get("test", {})
    if t:
        means = ", ".join(f"{k} {v:.4g}" for k, v in t["mean"].items())
        print(f"test ({t['protocol']}, {t['num_samples']} windows): {means}")
        for b, rep in m.get("baselines", {}).items():
            print(f"  baseline {b}: " + ", ".join(f"{k} {v:.4g}" for k, v in rep["mean"].items()))
        if m.get("verdict"):
            print(f"verdict: {m['verdict']}")
    print(f"run folder: {m['run']}")


def _s3_env(s: RunSettings) -> dict:
    """The driver's S3 settings when the run touches s3://: workers (possibly started before
    the driver set them, or on other nodes) read test windows and write the run folder."""
    from pipeline.storage import s3_environment
    return s3_environment() if "s3://" in s.data + s.storage else {}
