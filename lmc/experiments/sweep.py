"""Ray Tune sweep of the memory slot size, the clip lengths and the learning rate.

    from lmc.experiments.sweep import SweepSpace, SweepSettings, sweep, sweep_run
    result = sweep(lmc.preset("paper-kth"), SweepSpace(memory_slots=(25, 50, 100, 200)),
                   SweepSettings(sweep_run(data="shards/kth", storage="runs", name="kth-sweep")))

``SweepSettings.run`` is a ``RunSettings``: the sweep's data, its folder (``<storage>/<name>``)
and the settings of every trial's run (``sweep_run``: one worker, a validation every 10
iterations, ... unless given); each trial trains in ``<storage>/<name>/train-<trial id>``.

Every trial is one Ray Train run of the training driver (``lmc.train``): the Tune trial is only
the *driver* of a ``TorchTrainer`` whose workers run ``lmc.train.trainer`` (Ray
Train V2's way of composing Train and Tune: a function trainable that calls ``trainer.fit()``
with ``TuneReportCallback`` forwarding the workers' reports). The validation metrics that the
workers report every ``eval_every`` iterations (``val_mse``, ``val_lpips`` when LPIPS weights are
on the machine) drive an ASHA scheduler on ``iteration``.

Before any Ray work the space is expanded into its (memory_slots, short_len, long_len)
combinations and filtered: a combination is kept only if it makes a valid config
(long_len <= short_len + out_len, clips >= 9 frames, ...) and the shards can feed it (same
image size and channels, windows as long as short_len + out_len, and the shards' short_len, which
the training driver requires). Rejected combinations are listed with their reason; a space
with none left is a ``SweepSpaceError``. The kept combinations are grid-searched, the learning
rate is drawn log-uniformly (or grid-searched over a list); ``num_samples`` repeats the grid.

Placement groups: when ASHA stops a trial, Tune kills the trial's actor and with it the Train
controller; Ray Train V2 then frees the run's worker placement group through its State-API
based cleaner, which needs the Ray dashboard. On a cluster started without the dashboard
(``include_dashboard=False``) a stopped trial's CPUs stay reserved and later trials wait for
them: run sweeps on a cluster with the dashboard (the default of ``ray start`` / ``ray.init``).

Results live under the same storage as training runs (path or s3://): ``<storage>/<name>/``
holds Tune's experiment state and trial folders, the Train runs ``train-<trial id>/``,
``results.csv`` (trials sorted by the metric), ``best_config.json`` (an LMCConfig JSON for
``jobs/train_*.py --config``) and ``sweep.png`` (metric vs slot size, lengths and lr).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Sequence

from ..baselines import BASELINES, JUDGED_METRICS, beats_every_baseline, verdict, verdict_line
from ..config import ConfigError, LMCConfig, validator
from ..plots import plot_sweep
from ..train.settings import RunSettings

RESULTS_FILE, BEST_FILE, PLOT_FILE = "results.csv", "best_config.json", "sweep.png"
# A trial only drives its Train run (the workers hold the real resources); Tune needs a
# non-empty request, so it asks for a sliver of a CPU.
TRIAL_DRIVER_CPU = 0.01


class SweepSpaceError(ValueError):
    """The search space holds no combination that can be trained on the data."""


@dataclass(frozen=True)
class SweepSpace:
    """What a sweep varies. Every other config field comes from the base config."""

    memory_slots: Sequence[int] = (25, 50, 100, 200)
    short_len: Sequence[int] = (10,)
    long_len: Sequence[int] = (10, 20, 30, 40)
    lr: Sequence[float] = (1e-4, 1e-3)   # two values: log-uniform range; else: a grid of values
    lr_log_uniform: bool = True

    def __post_init__(self):
        for name in ("memory_slots", "short_len", "long_len", "lr"):
            v = getattr(self, name)
            if not v:
                raise SweepSpaceError(f"sweep dimension {name!r} is empty")
        if self.lr_log_uniform and (len(self.lr) != 2 or not 0 < self.lr[0] < self.lr[1]):
            raise SweepSpaceError(f"lr={tuple(self.lr)}: a log-uniform range needs (low, high) "
                                  "with 0 < low < high; or set lr_log_uniform=False for a list")


# A sweep's trials, unless told otherwise: one worker each, a validation (an ASHA decision point,
# and a checkpoint: ``checkpoint_every`` None follows ``eval_every``) every 10 iterations on 16
# windows, the final test on as many (``test_windows`` None follows ``eval_windows``), one
# restart, the newest checkpoint kept, no plots; the sweep's folder is <storage>/sweep.
SWEEP_RUN_DEFAULTS = {"name": "sweep", "num_workers": 1, "eval_every": 10, "eval_windows": 16,
                      "max_failures": 1, "num_to_keep": 1, "artifacts": False}
METRICS = ("val_mse", "val_mae", "val_psnr", "val_ssim", "val_lpips")


def sweep_run(**fields) -> RunSettings:
    """The ``RunSettings`` of a sweep: ``fields`` (``data`` and ``storage`` at least) over the
    sweep's defaults (``SWEEP_RUN_DEFAULTS``)."""
    return RunSettings(**{**SWEEP_RUN_DEFAULTS, **fields})


@dataclass(frozen=True)
class SweepSettings:
    """Where the sweep reads and writes, how its trials train (``run``: its data, storage and
    name, the settings of every trial's run) and how Tune schedules them."""

    run: RunSettings
    num_samples: int = field(default=1, metadata={
        "help": "repeats of the grid (learning rates drawn per (slots, short, long) "
                "combination)"})
    max_concurrent_trials: int | None = field(default=None, metadata={
        "help": "trials at once", "when_none": "from the cluster's resources"})
    metric: str | None = field(default=None, metadata={
        "choices": METRICS, "help": "what ASHA and the ranking judge",
        "when_none": "val_lpips when LPIPS is available, else val_mse"})
    grace_period: int | None = field(default=None, metadata={
        "help": "ASHA: iterations before a trial can be stopped",
        "when_none": "the validation interval"})
    reduction_factor: int = field(default=2, metadata={"help": "ASHA's reduction factor"})
    trial_retries: int = field(default=1, metadata={
        "help": "Tune re-runs a failed trial this many times (--max-failures: worker-group "
                "restarts inside one trial)"})
    search_seed: int = field(default=0, metadata={"help": "seed of the search's lr draws"})

    def __post_init__(self):
        need = validator("sweep setting", self)
        need(isinstance(self.run, RunSettings), "run", "a RunSettings (sweep_run(...))")
        need(isinstance(self.num_samples, int) and self.num_samples >= 1, "num_samples",
             "an integer >= 1")
        for n in ("max_concurrent_trials", "grace_period"):
            v = getattr(self, n)
            need(v is None or (isinstance(v, int) and v >= 1), n, "None or an integer >= 1")
        need(isinstance(self.reduction_factor, int) and self.reduction_factor >= 2,
             "reduction_factor", "an integer >= 2")
        need(isinstance(self.trial_retries, int) and self.trial_retries >= -1, "trial_retries",
             ">= 0, or -1 for unlimited")
        need(self.metric is None or self.metric in METRICS, "metric",
             "None (val_lpips when LPIPS is available, else val_mse) or " + " | ".join(METRICS))

    def trial(self, iterations: int, storage: str, name: str) -> RunSettings:
        """The run of one trial, in ``storage`` (the sweep's folder): a checkpoint at each
        validation and the final test on the validation's windows unless set."""
        r = self.run
        return dataclasses.replace(
            r, storage=storage, name=name,
            checkpoint_every=r.checkpoint_every or r.eval_interval(iterations),
            test_windows=r.test_windows or r.eval_windows)


# ---------------------------------------------------------------------------------------------
# the space, filtered before Ray

def expand_space(base: LMCConfig, space: SweepSpace,
                 facts=None) -> tuple[list[dict], list[tuple[dict, str]]]:
    """(kept combinations, [(rejected combination, reason)]) of (memory_slots, short_len,
    long_len). ``facts``: the shards' ``pipeline.DatasetFacts``; each combination's config must
    then be one the shards can train (the training driver's own check)."""
    from pipeline import DataError

    kept, rejected = [], []
    for slots, short, long_ in itertools.product(space.memory_slots, space.short_len,
                                                 space.long_len):
        combo = {"memory_slots": slots, "short_len": short, "long_len": long_}
        try:
            cfg = dataclasses.replace(base, **combo)
            if facts is not None:
                facts.require(short_len=cfg.short_len, train_len=cfg.window_len)
        except (ConfigError, DataError) as e:
            rejected.append((combo, str(e).replace("config field ", "")))
            continue
        kept.append(combo)
    return kept, rejected


def check_space(base: LMCConfig, space: SweepSpace, facts=None) -> list[dict]:
    """The kept combinations, or a ``SweepSpaceError`` listing why each one was rejected."""
    if facts is not None:
        facts.require(channels=base.channels, img_size=base.img_size)
    kept, rejected = expand_space(base, space, facts)
    if not kept:
        lines = "\n".join(f"  {c}: {r}" for c, r in rejected)
        raise SweepSpaceError(f"the sweep space has no valid combination "
                              f"(out_len {base.out_len}):\n{lines}")
    return kept


def max_concurrent(resources: dict, num_workers: int, cpus_per_worker: float,
                   use_gpu: bool) -> int:
    """Trials that can train at once: every Train worker's CPUs (GPUs) reserved, plus one CPU
    left for Ray Data's shard reading."""
    if use_gpu:
        return max(1, int(resources.get("GPU", 0) // num_workers))
    free = resources.get("CPU", 1) - 1
    return max(1, int(free // (num_workers * cpus_per_worker + TRIAL_DRIVER_CPU)))


# ---------------------------------------------------------------------------------------------
# one trial: a Ray Train run

def _trial(config: dict, *, base: dict, settings: SweepSettings, trial_storage: str,
           s3_env: dict) -> None:
    """Tune function trainable: build the trial's config and run it as a Ray Train run."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..train import train

    os.environ.update(s3_env)    # the sweep driver's S3 settings (object store, not logged)

    cfg = LMCConfig.from_dict({**base, **config["combo"], "lr": float(config["lr"])})
    # Trials queue for workers on a busy cluster: give the worker group longer than Ray
    # Train's 60 s default to start (an explicit setting in the environment wins).
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    trial_id = ray.tune.get_context().get_trial_id()
    train(cfg, settings.trial(cfg.iterations, trial_storage, f"train-{trial_id}"),
          callbacks=[TuneReportCallback()], verbose=False)


# ---------------------------------------------------------------------------------------------
# the sweep

def _search_space(combos: list[dict], space: SweepSpace):
    from ray import tune

    lr = (tune.loguniform(*space.lr) if space.lr_log_uniform
          else tune.grid_search([float(x) for x in space.lr]))
    return {"combo": tune.grid_search(combos), "lr": lr}


def sweep(base: LMCConfig, space: SweepSpace, settings: SweepSettings, *,
          address: str | None = None, log=print) -> dict:
    """Run the sweep; returns {"trials": rows sorted by the metric, "best": row, "best_config":
    path, "results": path, "plot": path, "metric", "rejected": [...]}.

    Raises ``SweepSpaceError`` (no valid combination) and the driver's data/storage errors
    before any trial starts."""
    from pipeline import DatasetFacts
    from pipeline.cluster import connect
    from pipeline.storage import s3_environment

    from ..metrics import lpips_status
    from ..train import check, check_storage, storage_location
    from ..train.driver import absolute_paths

    # trials run in folders of Tune's: relative paths are resolved here, where the user meant them
    settings = dataclasses.replace(settings, run=absolute_paths(settings.run))
    run = settings.run
    facts = DatasetFacts.read(run.data)
    combos = check_space(base, space, facts)
    _, rejected = expand_space(base, space, facts)
    metric = settings.metric or ("val_lpips" if lpips_status()[0] else "val_mse")
    mode = "max" if metric in ("val_psnr", "val_ssim") else "min"
    iterations = base.iterations
    root = storage_location(run.storage)
    exp = check_storage(root.child(run.name).uri)
    trial_storage = exp.uri
    # The training driver's own read-only checks, on the first combination.
    check(dataclasses.replace(base, **combos[0]),
          settings.trial(iterations, trial_storage, "train-check"))
    if log:
        log(f"sweep {exp.uri}: {len(combos)} combination(s) x {settings.num_samples} lr "
            f"sample(s), metric {metric} ({mode}), {iterations} iterations per trial")
        for c, r in rejected:
            log(f"  skipped {c}: {r}")

    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    connect(address, configure_logging=False)
    concurrent = settings.max_concurrent_trials or max_concurrent(
        ray.cluster_resources(), run.num_workers, run.cpus_per_worker, run.use_gpu)
    # max_t one past the budget: a trial that finishes returns from fit() by itself (its Train
    # controller removes its placement group) instead of being stopped by ASHA at max_t.
    scheduler = ASHAScheduler(time_attr="iteration", max_t=iterations + 1,
                              grace_period=settings.grace_period or run.eval_interval(iterations),
                              reduction_factor=settings.reduction_factor)
    trainable = tune.with_parameters(_trial, base=base.to_dict(),
                                     settings=settings,
                                     trial_storage=trial_storage, s3_env=s3_environment())
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": TRIAL_DRIVER_CPU}),
        param_space=_search_space(combos, space),
        tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler,
                                    num_samples=settings.num_samples,
                                    search_alg=_seeded_search(settings.search_seed,
                                                              concurrent)),
        run_config=tune.RunConfig(
            name=run.name, storage_path=root.root,
            storage_filesystem=None if root.is_local else root.fs,
            failure_config=tune.FailureConfig(max_failures=settings.trial_retries),
            verbose=1 if log else 0),
    )
    grid = tuner.fit()
    rows = trial_rows(grid, metric, mode, iterations)
    if not rows:
        errors = [str(r.error).splitlines()[0] for r in grid if r.error]
        raise RuntimeError(f"no trial reported {metric}; errors: {errors[:3]}")
    best = rows[0]
    best_cfg = LMCConfig.from_dict({**base.to_dict(), **best["combo"], "lr": best["lr"]})
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, png_path = os.path.join(tmp, RESULTS_FILE), os.path.join(tmp, PLOT_FILE)
        write_results_csv(rows, metric, csv_path)
        plot_sweep(rows, metric, png_path)
        exp.put_file(csv_path, RESULTS_FILE)
        exp.put_file(png_path, PLOT_FILE)
    exp.write_bytes(json.dumps(best_cfg.to_dict(), indent=2, sort_keys=True).encode(), BEST_FILE)
    if log:
        log(format_results(rows, metric))
        log(f"best: {best['trial_id']} {best['combo']} lr {best['lr']:.3g}: {metric} "
            f"{best['metric']:.6g}\nwrote {exp.uri}/{BEST_FILE} (train with --config), "
            f"{RESULTS_FILE}, {PLOT_FILE}")
    return {"trials": rows, "best": best, "metric": metric, "mode": mode,
            "rejected": rejected, "best_config": f"{exp.uri}/{BEST_FILE}",
            "results": f"{exp.uri}/{RESULTS_FILE}", "plot": f"{exp.uri}/{PLOT_FILE}",
            "concurrent": concurrent}


def _seeded_search(seed: int, max_concurrent_trials: int):
    """Tune's default search (grid + random draws), seeded. It takes the concurrency limit
    itself: Tune does not apply max_concurrent_trials to a search algorithm passed in."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent_trials)


def validation_verdict(metrics: dict) -> dict:
    """``lmc.baselines.verdict`` on every metric of a validation report's flat names
    (``val_mse``, ``val_copy_last_mse``, ...): {baseline: {"beats", "loses", "ties", "line"}}."""
    def means(prefix: str) -> dict:
        return {m: float(metrics[k]) for m in JUDGED_METRICS if (k := prefix + m) in metrics}

    return verdict(means("val_"), {b: v for b in BASELINES if (v := means(f"val_{b}_"))})


def trial_rows(grid, metric: str, mode: str, iterations: int) -> list[dict]:
    """One row per trial that reported ``metric``, best first (by its last reported value)."""
    rows = []
    for r in grid:
        if not r.metrics or metric not in r.metrics:
            continue
        df = r.metrics_dataframe
        history = df[metric].dropna().tolist() if df is not None and metric in df else []
        it = int(r.metrics.get("iteration", 0))
        # the baselines on the same validation windows (they differ when lengths are swept)
        base = {b: float(r.metrics[key]) for b in BASELINES
                if (key := metric.replace("val_", f"val_{b}_", 1)) in r.metrics}
        judged = validation_verdict(r.metrics)
        rows.append({"trial_id": r.metrics.get("trial_id", ""), "combo": dict(r.config["combo"]),
                     "lr": float(r.config["lr"]), "metric": float(r.metrics[metric]),
                     "baselines": base, "verdict": judged,
                     "beats_baselines": beats_every_baseline(judged) if judged else None,
                     "best_seen": (min if mode == "min" else max)(history) if history else None,
                     "iteration": it, "reports": len(history),
                     "stopped_early": it < iterations and r.error is None,
                     "error": str(r.error).splitlines()[0][:200] if r.error else None})
    rows.sort(key=lambda x: x["metric"] if mode == "min" else -x["metric"])
    return rows


def format_results(rows: list[dict], metric: str) -> str:
    """The sorted trials with the baselines' value of the same metric on the same validation
    windows (copy-last-frame, all-zero frame), whether the trial beats both on every metric
    ("beats"), then each trial's verdict, metric by metric (``lmc.baselines.verdict``)."""
    head = (f"{'trial':<14}{'slots':>6}{'short':>6}{'long':>6}{'lr':>10}{metric:>12}"
            f"{'copy_last':>11}{'zeros':>11}{'beats':>7}{'iteration':>10}  status")
    lines = [head]

    def cell(v, width):
        return f"{'n/a':>{width}}" if v is None else f"{v:>{width}.5g}"

    for r in rows:
        c = r["combo"]
        base = r.get("baselines", {})
        beats = {True: "yes", False: "NO", None: "n/a"}[r.get("beats_baselines")]
        status = "error" if r["error"] else ("stopped by ASHA" if r["stopped_early"] else "finished")
        lines.append(f"{r['trial_id']:<14}{c['memory_slots']:>6}{c['short_len']:>6}"
                     f"{c['long_len']:>6}{r['lr']:>10.3g}{r['metric']:>12.6g}"
                     f"{cell(base.get('copy_last'), 11)}{cell(base.get('zeros'), 11)}{beats:>7}"
                     f"{r['iteration']:>10}  {status}")
    judged = [r for r in rows if r.get("verdict")]
    if judged:
        lines.append("verdict on the last validation windows:")
        lines += [f"{r['trial_id']}: {verdict_line(r['verdict'])}" for r in judged]
    return "\n".join(lines)


def write_results_csv(rows: list[dict], metric: str, path) -> None:
    lines = [f"rank,trial_id,memory_slots,short_len,long_len,lr,{metric},best_seen,"
             f"copy_last_{metric},zeros_{metric},beats_baselines,iteration,stopped_early,verdict"]
    for i, r in enumerate(rows, 1):
        c = r["combo"]
        base = r.get("baselines", {})
        cells = ["" if base.get(b) is None else f"{base[b]:.6g}" for b in ("copy_last", "zeros")]
        lines.append(f"{i},{r['trial_id']},{c['memory_slots']},{c['short_len']},{c['long_len']},"
                     f"{r['lr']:.6g},{r['metric']:.6g},{r['best_seen']:.6g},{','.join(cells)},"
                     f"{r.get('beats_baselines')},{r['iteration']},{r['stopped_early']},"
                     f"\"{verdict_line(r.get('verdict') or {})}\"")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


