"""Ray Train driver: plans a run (every check that can run before Ray), then runs Algorithm 1
under DDP on a ``TorchTrainer`` whose workers run ``lmc.train.trainer``.

    import lmc
    from lmc.train import RunSettings, train
    metrics = train(lmc.preset("tiny"), RunSettings(data="data/kth-shards",
                                                    storage="runs", name="tiny-kth"))

``check`` reads only (config vs settings vs the shards' facts); ``validate`` adds the storage
probe (it creates the run folder) and the resume check (an existing run's checkpoint must
belong to this architecture). Each problem is one clear error before any Ray work. Submitting
the same name and storage again resumes from the latest checkpoint (Ray Train V2 restores a
run from its storage folder); a worker failure restarts the worker group from the latest
checkpoint up to ``max_failures`` times.

``batch_size`` in the config is the global batch, split over the live workers (an elastic run,
``--num-workers MIN-MAX``, has as many as the cluster holds); each rank weighs its loss by its
share, so the update is the global batch's mean gradient (``loop.batch_share``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field

import torch

from ..accel import compile_problem
from ..alignment import NonFiniteLossError
from ..checkpoint import CONFIG_FILE, MODEL_FILE
from ..config import ConfigError, LMCConfig
from ..model import LMCModel
from ..protocols import Protocol, protocol_for
from ..reference import CheckpointError, load_matching
from .checkpoints import RunCheckpoints
from .lease import RunLease
from .placement import _alive_nodes, _has_autoscaler, check_placement, worker_resources
from .progress import Console
from .run_folder import METRICS_FILE, StorageError, read_json, s3_env, storage_location
from .settings import RunSettings


@dataclass
class Plan:
    """What ``validate`` found: the run folder, the shards' facts and the evaluation protocol,
    what the run resumes from and the config changes allowed against it."""
    run_uri: str
    storage_root: str
    facts: object                    # pipeline.DatasetFacts
    protocol: Protocol
    resume_from: str | None          # the newest verified checkpoint of an existing run
    skipped: list = field(default_factory=list)   # newer checkpoints that did not verify
    changes: dict = field(default_factory=dict)   # field -> [old, new], allowed by the user
    data_fingerprint: str | None = None


def check(cfg: LMCConfig, s: RunSettings, log=None):
    """Config vs run settings vs the shards (the manifest, then every shard file verified
    against it): (``pipeline.DatasetFacts``, the protocol the run scores). One clear error
    each; ``log`` gets the verification's one line."""
    from pipeline import DataError, DatasetFacts, verify_dataset

    if not isinstance(cfg, LMCConfig):
        raise ConfigError(f"expected an LMCConfig, got {type(cfg).__name__}")
    if cfg.batch_size < s.num_workers:
        raise ConfigError(f"config field 'batch_size' = {cfg.batch_size} is invalid; allowed: at "
                          f"least one window per worker, >= {s.num_workers} (--num-workers "
                          f"{s.workers}); it is the global batch, split over the live workers")
    if s.compile:
        why = compile_problem("cuda" if s.use_gpu else "cpu")
        if why:
            raise ConfigError(f"run setting 'compile' = True cannot work here: {why}")
    facts = DatasetFacts.read(s.data)
    facts.require(channels=cfg.channels, img_size=cfg.img_size, short_len=cfg.short_len,
                  train_len=cfg.window_len, splits=("train", "test"))
    verify_dataset(facts, ("train", "test"), log=log)   # sizes, sha256 (once), rows vs manifest
    try:
        protocol = protocol_for(cfg.short_len, facts.test_out_len, s.protocol)
    except ValueError as e:
        raise DataError(f"{facts.path}: {e}") from None
    return facts, protocol


def check_storage(uri: str):
    """The location at ``uri``, created and probed with a small write (``StorageError`` if it
    cannot be)."""
    try:
        loc = storage_location(uri)
        loc.makedirs()
        probe = f".probe-{os.getpid()}-{time.time_ns()}"
        loc.write_bytes(b"ok", probe)
        loc.delete(probe)
    except (OSError, ValueError) as e:  # pyarrow raises OSError subclasses for I/O failures
        raise StorageError(f"cannot create or write {uri} ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); check the path, "
                           "bucket, endpoint and credentials") from None
    return loc


# Fields that never make a resume another run: the iteration budget. Run settings (workers,
# cadences, storage layout, autocast) are not compared at all; the global batch is a config field.
FREE_TO_CHANGE = ("iterations",)


def config_changes(stored: LMCConfig, cfg: LMCConfig) -> dict:
    """{field: [old, new]} of every config field but the free ones that differs."""
    old, new = stored.to_dict(), cfg.to_dict()
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new))
            if k not in FREE_TO_CHANGE and old.get(k) != new.get(k)}


def check_allow_change(allow_change) -> tuple:
    """The names given to --allow-change: config fields, or "data" (another dataset)."""
    allowed = sorted(f.name for f in dataclasses.fields(LMCConfig) if f.name not in FREE_TO_CHANGE)
    unknown = [n for n in allow_change if n not in allowed and n != "data"]
    if unknown:
        raise ConfigError(f"--allow-change {','.join(unknown)}: unknown field; allowed: data, "
                          + ", ".join(allowed))
    return tuple(allow_change)


def _check_resume(cfg: LMCConfig, run, name: str, fingerprint: str | None,
                  allow_change: tuple) -> dict:
    """The resumed checkpoint must hold this architecture (keys listed if not) and this config
    and data, up to the changes in ``allow_change``: {field: [old, new]} of those applied."""
    checkpoints = RunCheckpoints(run)
    where = f"{run.uri}/{name}"
    try:
        stored = LMCConfig.from_dict(json.loads(run.read_bytes(name, CONFIG_FILE)))
        stored_data = checkpoints.manifest(name).get("data_fingerprint")
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{where}/{CONFIG_FILE} is not a config this code reads ({e})") from None
    local, temporary = run.fetch(name, MODEL_FILE)     # verified by newest_verified
    try:
        state = torch.load(local, map_location="cpu", weights_only=True)
    finally:
        if temporary:
            os.remove(local)
    try:
        load_matching(LMCModel(cfg), state, f"checkpoint {where}")
    except CheckpointError as e:
        raise CheckpointError(f"{e}\nThe run {run.uri} was trained with another architecture; "
                              "use another --name (or storage) or the run's own config.") from None
    changes = config_changes(stored, cfg)
    if stored_data and fingerprint and stored_data != fingerprint:
        changes["data"] = [f"shards {stored_data[:12]}", f"shards {fingerprint[:12]}"]
    refused = {k: v for k, v in changes.items() if k not in allow_change}
    if refused:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise ConfigError(
            f"resuming run {run.uri} from {name} would change what it trains ({listed}); run "
            f"with the run's own settings, or say so with --allow-change {','.join(refused)} "
            "(applied from this iteration on and recorded in metrics.json's attempts), or use "
            "another --name")
    return changes


def validate(cfg: LMCConfig, s: RunSettings, allow_change=(), log=None) -> Plan:
    """``check``, then the run folder (created, probed), its newest verified checkpoint and
    the config changes against it (refused unless in ``allow_change``)."""
    from pipeline.shards import read_manifest

    allow_change = check_allow_change(allow_change)
    facts, protocol = check(cfg, s, log=log)
    root = storage_location(s.storage)
    run = check_storage(root.child(s.name).uri)
    fingerprint = read_manifest(s.data).get("fingerprint")
    try:
        choice = RunCheckpoints(run).newest_verified()
    except OSError as e:
        raise StorageError(f"cannot read the checkpoints of {run.uri} ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None
    changes = (_check_resume(cfg, run, choice.name, fingerprint, allow_change)
               if choice.name else {})
    return Plan(run.uri, root.root, facts, protocol, choice.name, choice.skipped, changes,
                fingerprint)


# ----------------------------------------------------------------------------------------------
# The driver


class RunStopped(Exception):
    """The run was asked to stop (SIGINT / SIGTERM) and did: checkpointed and ended."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal_name = signal_name


class RunFailedError(ValueError):
    """The run ended on a deterministic error (data, checkpoint, config, storage, lease):
    retrying would meet it again, so it was not retried."""


def train(cfg: LMCConfig, settings: RunSettings, *, hooks=(), callbacks: list | None = None,
          address: str | None = None, verbose: bool = True, allow_change=(),
          force_unlock: bool = False) -> dict:
    """Validate, take the run's lease, then run Algorithm 1 on a Ray Train ``TorchTrainer``;
    returns metrics.json.

    ``hooks``: ``lmc.train.hooks`` objects the workers call (fault injection, tracing).
    ``callbacks``: Ray Train callbacks for the ``RunConfig`` (Ray Tune passes its
    ``TuneReportCallback`` so each trial is one such run).
    ``allow_change``: config fields (or "data") a resume may change; ``force_unlock``: take
    the run's lease even from a live-looking holder.

    Joins the cluster at ``address`` or in RAY_ADDRESS (as under ``ray job submit``), else
    starts an embedded Ray (``pipeline.cluster.connect``). SIGINT / SIGTERM ask the workers to
    checkpoint at the next step and end (``RunStopped``); a second one interrupts at once.
    Raises ``ConfigError``, ``DataError``, ``StorageError``, ``CheckpointError`` or
    ``RunLockedError`` before any Ray work; ``NonFiniteLossError`` when a loss is NaN/inf,
    ``RunFailedError`` on any other deterministic error met while training (neither is
    retried), ``RuntimeError`` when workers keep dying.
    """
    say = print if verbose else (lambda *a, **k: None)
    settings = absolute_paths(settings)
    plan = validate(cfg, settings, allow_change, log=say)
    run = storage_location(plan.run_uri)
    lease = RunLease(run, job_id=_job_id(), warn=print).acquire(force=force_unlock)
    try:
        for name, why in plan.skipped:
            print(f"warning: skipping {name}: {why}")
        resume = (f"resuming from {plan.resume_from} (its newest verified checkpoint"
                  + (f"; changed: {', '.join(f'{k} {a} -> {b}' for k, (a, b) in plan.changes.items())}"
                     if plan.changes else "") + ")" if plan.resume_from else "new run")
        say(f"run {plan.run_uri}: {resume}; data {settings.data} ({plan.facts.rows['train']} "
            f"train / {plan.facts.rows['test']} test windows); protocol {plan.protocol.name}")
        from pipeline.cluster import connect
        # Ray first: ray.init installs its own SIGTERM handler (a stack dump, then death),
        # which would replace this job's stop-at-a-checkpoint handler if installed after it
        connect(address, configure_logging=False)
        with _stop_on_signals(lease, say):
            outcome = _fit(cfg, settings, plan, lease, hooks, callbacks, verbose)
    finally:
        lease.release()
    status, message = outcome.get("status"), outcome.get("message")
    if status == "stopped":
        at = outcome.get("checkpoint")
        raise RunStopped(f"run {plan.run_uri} stopped by {message} at iteration "
                         f"{outcome['iteration']}" + (f"; {at} is its newest checkpoint"
                                                      if at else "")
                         + "; the same command resumes it", message)
    if status == "failed":
        at = outcome.get("checkpoint") or plan.resume_from
        hint = f" (its newest checkpoint: {at})" if at else ""
        if message and message.startswith("NonFiniteLossError: "):
            raise NonFiniteLossError(message.split(": ", 1)[1])
        raise RunFailedError(f"run {plan.run_uri} stopped{hint}: {message}")
    metrics = read_json(run, METRICS_FILE)
    if metrics is None:
        raise RuntimeError(f"training run {plan.run_uri} ended without writing {METRICS_FILE}")
    if verbose:
        _print_summary(metrics)
    return metrics


def _fit(cfg, settings, plan: Plan, lease, hooks, callbacks, verbose) -> dict:
    """The TorchTrainer run; the workers' outcome (rank 0's return value)."""
    import ray
    import ray.util.scheduling_strategies
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from .elastic import ElasticCallback
    from .trainer import train_loop_per_worker

    data_context = ray.data.DataContext.get_current()
    data_context.enable_progress_bars = False
    data_context.print_on_execution_start = False    # not a "Starting execution" per epoch
    nodes = _alive_nodes()
    per_worker = worker_resources(settings, nodes, log=print if verbose else None)
    check_placement(settings, per_worker, nodes, autoscaling=_has_autoscaler,
                    log=print if verbose else None)
    storage = storage_location(settings.storage)
    # the progress queue lives on the driver's node: on a worker node it would die with it
    here = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False)
    on_driver = {"num_cpus": 0, "scheduling_strategy": here}
    progress = Queue(maxsize=256, actor_options=on_driver) if verbose else None
    # elastic runs: the controller asks the workers for a checkpoint before it grows them
    resize_requests = ((Queue(actor_options=on_driver), Queue(actor_options=on_driver))
                       if settings.elastic else None)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"model": cfg, "settings": settings, "protocol": plan.protocol,
                           "run_uri": plan.run_uri, "hooks": list(hooks),
                           "submission": uuid.uuid4().hex, "s3_env": s3_env(settings),
                           "lease_owner": lease.holder.owner, "changes": plan.changes,
                           "data_fingerprint": plan.data_fingerprint, "progress": progress,
                           "resize_requests": resize_requests},
        scaling_config=ScalingConfig(
            num_workers=((settings.min_workers, settings.num_workers) if settings.elastic
                         else settings.num_workers),
            elastic_resize_monitor_interval_s=settings.resize_check_s,
            use_gpu=settings.use_gpu,
            resources_per_worker=per_worker, placement_strategy=settings.placement_strategy),
        run_config=RunConfig(
            name=settings.name, storage_path=storage.root,
            storage_filesystem=None if storage.is_local else storage.fs,
            failure_config=FailureConfig(max_failures=settings.max_failures,
                                         max_preemption_failures=settings.max_preemptions),
            callbacks=list(callbacks or []) + (
                [ElasticCallback(settings.min_workers, per_worker, *resize_requests)]
                if settings.elastic else [])),
        datasets={"train": _train_dataset(settings.data, plan.facts)},
    )
    console = Console() if verbose else None

    def show_progress():
        while progress is not None and not progress.empty():
            console.show(progress.get_nowait())
    try:
        result = _in_thread(trainer.fit, show_progress)
        show_progress()
    except Exception as e:
        raise RuntimeError(f"training run {plan.run_uri} failed: {_worker_error(e)}") from e
    finally:
        if console:
            console.close()
    return result.return_value or {"status": "failed",
                                   "message": "the workers returned no outcome"}


def _in_thread(fn, every=lambda: None):
    """``fn()`` in a thread while the main thread waits (calling ``every()`` between waits),
    so that this module's SIGINT / SIGTERM handlers stay in force (``TorchTrainer.fit``
    replaces the SIGINT handler with one that aborts the run without a checkpoint when it runs
    in the main thread)."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:       # handed to the caller's thread
            box["error"] = e
    t = threading.Thread(target=target, name="lmc-fit", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.2)                      # signal handlers run between the waits
        try:
            every()
        except Exception:                # progress is optional; the run is not
            pass
    if "error" in box:
        raise box["error"]
    return box["result"]


@contextlib.contextmanager
def _stop_on_signals(lease, say):
    """SIGINT / SIGTERM: ask the workers (through the lease) to checkpoint at the next step
    and end; a second signal interrupts at once. Only in the main thread (Python's rule)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def on_signal(signum, frame):
        name = signal.Signals(signum).name
        if lease.holder.stop:                     # the second one: do not wait
            raise KeyboardInterrupt
        say(f"{name}: checkpointing at the next step, then stopping (again to stop at once)",
            flush=True)
        lease.request_stop(name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _job_id() -> str | None:
    """The Ray job submission id when running under ``ray job submit``."""
    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        return (config.get("metadata") or {}).get("job_submission_id")
    except ValueError:
        return None


def absolute_paths(s: RunSettings) -> RunSettings:
    """``s`` with its local data and storage paths made absolute, here on the driver: the
    workers get them in their settings and run in a folder of Ray Train's, where a relative
    path (``--data data/kth-shards``) names nothing. URIs (``s3://``) stay as they are."""
    def absolute(path: str) -> str:
        return path if "://" in path else os.path.abspath(path)
    return dataclasses.replace(s, data=absolute(s.data), storage=absolute(s.storage))


# What each read task of the train split asks Ray for. Less than a CPU, so that a read fits
# beside the workers on a node they share: on two 1-CPU nodes with a worker each, a 1-CPU read
# (Ray Data's default; also a lost node's blocks being rebuilt) would wait forever.
READ_TASK_CPUS = 0.25


def _train_dataset(data: str, facts):
    """The train split as a Ray Dataset; small ones are read once into the object store, so
    every epoch's split does not read and decode the Parquet files again (blocks lost with a
    node are read again by Ray, at ``READ_TASK_CPUS`` each)."""
    import pipeline
    ds = pipeline.load_split(data, "train", read_cpus=READ_TASK_CPUS)
    return ds.materialize() if facts.bytes.get("train", 1 << 62) < 1 << 30 else ds


def _worker_error(e: BaseException) -> str:
    """The first worker's own exception out of Ray Train's wrappers."""
    failures = getattr(e, "worker_failures", None)
    if failures:
        rank, err = sorted(failures.items())[0]
        base = getattr(err, "_base_exc", err)
        return f"rank {rank}: {type(base).__name__}: {str(base).strip().splitlines()[-1][:500]}"
    return f"{type(e).__name__}: {str(e).strip()[:500]}"


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
        from ..baselines import verdict   # per baseline, metric by metric (as in metrics.json)
        base = {b: rep["mean"] for b, rep in m.get("baselines", {}).items()}
        for v in verdict(t["mean"], base).values():
            print(f"verdict {v['line']}")
    print(f"run folder: {m['run']}")
