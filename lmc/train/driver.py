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

``batch_size`` in the config is the global batch: each of the N workers takes batch_size / N.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass

import torch

from ..accel import compile_problem
from ..alignment import NonFiniteLossError
from ..checkpoint import MODEL_FILE
from ..config import ConfigError, LMCConfig
from ..model import LMCModel
from ..protocols import Protocol, protocol_for
from ..reference import CheckpointError, load_matching
from .run import (ERROR_FILE, METRICS_FILE, RunSettings, StorageError, latest_checkpoint,
                  read_json, s3_env, storage_location)


@dataclass
class Plan:
    """What ``validate`` found: the run folder, the shards' facts and the evaluation protocol."""
    run_uri: str
    storage_root: str
    facts: object                    # pipeline.DatasetFacts
    protocol: Protocol
    resume_from: str | None          # latest checkpoint folder of an existing run, if any


def check(cfg: LMCConfig, s: RunSettings):
    """Config vs run settings vs the shards, reading nothing but the manifest:
    (``pipeline.DatasetFacts``, the protocol the run scores). One clear error each."""
    from pipeline import DataError, DatasetFacts

    if not isinstance(cfg, LMCConfig):
        raise ConfigError(f"expected an LMCConfig, got {type(cfg).__name__}")
    if cfg.batch_size % s.num_workers:
        raise ConfigError(f"config field 'batch_size' = {cfg.batch_size} is invalid; allowed: a "
                          f"multiple of num_workers = {s.num_workers} (it is the global batch)")
    if s.compile:
        why = compile_problem("cuda" if s.use_gpu else "cpu")
        if why:
            raise ConfigError(f"run setting 'compile' = True cannot work here: {why}")
    facts = DatasetFacts.read(s.data)
    facts.require(channels=cfg.channels, img_size=cfg.img_size, short_len=cfg.short_len,
                  train_len=cfg.window_len, splits=("train", "test"))
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
    """``check``, then the run folder (created, probed) and an existing run's checkpoint."""
    facts, protocol = check(cfg, s)
    root = storage_location(s.storage)
    run = check_storage(root.child(s.name).uri)
    resume = latest_checkpoint(run)
    _check_resume(cfg, run, resume)
    return Plan(run.uri, root.root, facts, protocol, resume)


# ----------------------------------------------------------------------------------------------
# The driver


def train(cfg: LMCConfig, settings: RunSettings, *, hooks=(), callbacks: list | None = None,
          address: str | None = None, verbose: bool = True) -> dict:
    """Validate, then run Algorithm 1 on a Ray Train ``TorchTrainer``; returns metrics.json.

    ``hooks``: ``lmc.train.hooks`` objects the workers call (fault injection, tracing).
    ``callbacks``: Ray Train callbacks for the ``RunConfig`` (Ray Tune passes its
    ``TuneReportCallback`` so each trial is one such run).

    Joins the cluster at ``address`` or in RAY_ADDRESS (as under ``ray job submit``), else
    starts an embedded Ray (``pipeline.cluster.connect``).
    Raises ``ConfigError``, ``DataError``, ``StorageError`` or ``CheckpointError`` before any Ray
    work, ``NonFiniteLossError`` when a loss is NaN/inf, ``RuntimeError`` when workers keep failing.
    """
    plan = validate(cfg, settings)
    if verbose:
        print(f"run {plan.run_uri}: {'resuming from ' + plan.resume_from if plan.resume_from else 'new run'}"
              f"; data {settings.data} ({plan.facts.rows['train']} train / "
              f"{plan.facts.rows['test']} test windows); protocol {plan.protocol.name}")
    run = storage_location(plan.run_uri)
    run.delete(ERROR_FILE)

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .trainer import train_loop_per_worker

    from pipeline.cluster import connect

    connect(address, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    nodes = _alive_nodes()
    per_worker = worker_resources(settings, nodes, log=print if verbose else None)
    check_placement(settings, per_worker, nodes, autoscaling=_has_autoscaler,
                    log=print if verbose else None)
    storage = storage_location(settings.storage)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"model": cfg, "settings": settings, "protocol": plan.protocol,
                           "run_uri": plan.run_uri, "hooks": list(hooks),
                           "submission": uuid.uuid4().hex, "s3_env": s3_env(settings)},
        scaling_config=ScalingConfig(
            num_workers=settings.num_workers, use_gpu=settings.use_gpu,
            resources_per_worker=per_worker, placement_strategy=settings.placement_strategy),
        run_config=RunConfig(
            name=settings.name, storage_path=storage.root,
            storage_filesystem=None if storage.is_local else storage.fs,
            failure_config=FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=settings.num_to_keep),
            callbacks=callbacks),
        datasets={"train": _train_dataset(settings.data, plan.facts)},
    )
    try:
        trainer.fit()
    except Exception as e:
        fatal = read_json(run, ERROR_FILE)
        if fatal:
            raise NonFiniteLossError(fatal["message"]) from None
        raise RuntimeError(f"training run {plan.run_uri} failed: {_worker_error(e)}") from e
    fatal = read_json(run, ERROR_FILE)
    if fatal:
        raise NonFiniteLossError(fatal["message"])
    metrics = read_json(run, METRICS_FILE)
    if metrics is None:
        raise RuntimeError(f"training run {plan.run_uri} ended without writing {METRICS_FILE}")
    if verbose:
        _print_summary(metrics)
    return metrics


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


def worker_resources(s: RunSettings, nodes: list[dict], log=print) -> dict:
    """What Ray reserves per worker on these ``nodes`` (each {"id", "resources"}): a GPU with
    --gpus, and CPUs. Ray Data's read tasks need CPUs too: on a small cluster where the workers
    would take every CPU the shard reading would wait forever, so reserve less per worker there,
    leaving one CPU to Ray Data (whose reads ask for ``READ_TASK_CPUS`` each, so they fit on a
    node's leftover; the torch thread count, ``s.torch_threads``, stays)."""
    gpu = {"GPU": 1} if s.use_gpu else {}
    total = sum(n["resources"].get("CPU", 0) for n in nodes)
    if s.use_gpu or total - s.num_workers * s.cpus_per_worker >= 1 or total <= 1:
        return {"CPU": s.cpus_per_worker, **gpu}
    cpw = max(0.1, (total - 1) / s.num_workers)
    if log:
        log(f"reserving {cpw:.2f} CPU per worker (not {s.cpus_per_worker}) so that Ray Data "
            f"keeps 1 of the cluster's {total:g} CPUs for reading shards")
    return {"CPU": cpw, **gpu}


def check_placement(s: RunSettings, per_worker: dict, nodes: list[dict], *,
                    autoscaling=False, log=print) -> None:
    """Fail early, naming the flag, the request and what the cluster has, when the workers'
    placement group can never be placed on these ``nodes`` (each {"id", "resources"}); with
    an autoscaler that may add nodes, only say what the run will wait for. ``autoscaling``: a
    bool, or a callable asked only when the placement does not fit."""
    def fits(res: dict, k: int = 1) -> bool:
        return all(res.get(r, 0) >= k * v - 1e-9 for r, v in per_worker.items())

    def fmt(res: dict) -> str:
        return ", ".join(f"{r} {res.get(r, 0):g}" for r in per_worker)

    want = f"{s.num_workers} worker(s) of {fmt(per_worker)}"
    holders = [n for n in nodes if fits(n["resources"])]
    problem = None
    if not holders:
        problem = (f"no node can hold one worker ({fmt(per_worker)}; --cpus-per-worker / "
                   "--gpus)")
    elif s.placement_strategy == "STRICT_SPREAD" and len(holders) < s.num_workers:
        problem = (f"--placement-strategy STRICT_SPREAD puts each of the {s.num_workers} workers "
                   f"on its own node, but {len(holders)} node(s) can hold one")
    elif s.placement_strategy == "STRICT_PACK" and not any(fits(n["resources"], s.num_workers)
                                                           for n in nodes):
        problem = (f"--placement-strategy STRICT_PACK puts all {s.num_workers} workers on one "
                   "node, but no node can hold them all")
    elif sum(int(min(n["resources"].get(r, 0) / v for r, v in per_worker.items()) + 1e-9)
             for n in nodes) < s.num_workers:
        problem = f"the cluster cannot hold {want} at once (--num-workers)"
    if problem is None:
        return
    have = "; ".join(f"node {n['id'][:8]}: {fmt(n['resources'])}" for n in nodes) or "no nodes"
    message = f"{problem}. Requested: {want}; the cluster has {have}"
    if not (autoscaling() if callable(autoscaling) else autoscaling):
        raise ConfigError(message)
    if log:
        log(f"waiting for the autoscaler: {message}")


def _alive_nodes() -> list[dict]:
    import ray
    return [{"id": n["NodeID"], "resources": n.get("Resources", {})}
            for n in ray.nodes() if n.get("Alive")]


def _has_autoscaler() -> bool:
    """Whether an autoscaler that can add nodes runs for this cluster. Its monitor publishes a
    status in the GCS key-value store (what `ray status` reads); a cluster started without an
    autoscaling config runs a read-only monitor whose node types are the nodes themselves
    ("node_<id>"). Ray has no public call for this yet."""
    import json
    try:
        from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
        from ray.experimental.internal_kv import _internal_kv_get
        status = json.loads(_internal_kv_get(DEBUG_AUTOSCALING_STATUS) or b"{}")
    except Exception:
        return False
    types = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
    return any(t != f"node_{node}" for node, t in types.items())


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
        if m.get("verdict"):
            print(f"verdict: {m['verdict']}")
    print(f"run folder: {m['run']}")
