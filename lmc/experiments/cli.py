"""Command lines of the experiment jobs: jobs/tune_kth.py, jobs/tune_mmnist.py (a Ray Tune
sweep) and jobs/ablation.py (Table 4). Config flags as every job takes them (``lmc.cli``)."""
from __future__ import annotations

import argparse

from pipeline.cluster import add_address_flag

from ..cli import add_config_flags, config_from_args

SWEPT = ("memory_slots", "short_len", "long_len", "lr")   # flags that take several values here


def tune(argv=None, *, default_preset: str, default_long_len: tuple, doc: str) -> dict:
    """Parse a tune_*.py command line and run the sweep."""
    from .sweep import SweepSettings, SweepSpace, sweep

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="shard folder (or s3://...)")
    p.add_argument("--storage", required=True, help="storage root (path or s3://...), as for training")
    p.add_argument("--name", default="sweep", help="the sweep lives in <storage>/<name>/")
    add_address_flag(p)
    add_config_flags(p, default_preset=default_preset, skip=SWEPT)
    g = p.add_argument_group("the search space")
    g.add_argument("--memory-slots", type=int, nargs="+", default=[25, 50, 100, 200],
                   help="memory slot sizes")
    g.add_argument("--short-len", type=int, nargs="+", help="short clip lengths (default: the config's)")
    g.add_argument("--long-len", type=int, nargs="+", default=list(default_long_len),
                   help="long clip lengths (combinations with long_len > short_len + out_len "
                        "or < 9 are skipped)")
    g.add_argument("--lr", type=float, nargs="+", default=[1e-4, 1e-3],
                   help="two values: log-uniform range; with --lr-list: values grid-searched")
    g.add_argument("--lr-list", action="store_true", help="treat --lr as a list of choices")
    g.add_argument("--num-samples", type=int, default=1, help="repeats of the grid (lr draws per combination)")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers per trial")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpus", action="store_true", help="one GPU per worker")
    p.add_argument("--max-concurrent-trials", type=int, help="default: from the cluster's resources")
    p.add_argument("--metric", help="val_mse (default; val_lpips when LPIPS is available), ...")
    p.add_argument("--eval-every", type=int, default=10, help="iterations between validations")
    p.add_argument("--eval-windows", type=int, default=16, help="test windows per validation")
    p.add_argument("--grace-period", type=int, help="ASHA grace period in iterations")
    p.add_argument("--reduction-factor", type=int, default=2)
    p.add_argument("--trial-retries", type=int, default=1)
    a = p.parse_args(argv)
    cfg = config_from_args(a, skip=SWEPT)
    space = SweepSpace(memory_slots=a.memory_slots, short_len=a.short_len or [cfg.short_len],
                       long_len=a.long_len, lr=a.lr, lr_log_uniform=not a.lr_list)
    settings = SweepSettings(
        data=a.data, storage=a.storage, name=a.name, num_samples=a.num_samples,
        num_workers=a.num_workers, cpus_per_worker=a.cpus_per_worker, use_gpu=a.gpus,
        max_concurrent_trials=a.max_concurrent_trials, metric=a.metric,
        eval_every=a.eval_every, eval_windows=a.eval_windows, grace_period=a.grace_period,
        reduction_factor=a.reduction_factor, trial_retries=a.trial_retries)
    return sweep(cfg, space, settings, address=a.address)


def ablation(argv=None, *, doc: str) -> list[dict]:
    """Parse jobs/ablation.py's command line, train the designs and print Table 4."""
    from .ablation import DESIGNS, format_table, run_ablation, write_table

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="shard folder (or s3://...)")
    p.add_argument("--storage", required=True, help="run storage root (path or s3://...)")
    p.add_argument("--name", default="ablation",
                   help="runs are <storage>/<name>-<design> (-s<seed> with --seeds)")
    add_address_flag(p)
    add_config_flags(p, default_preset="paper-kth", skip=("query",))
    p.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    p.add_argument("--seeds", nargs="+", type=int,
                   help="train each design once per seed (table: mean +- std)")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--gpus", action="store_true", help="one GPU per worker")
    p.add_argument("--checkpoint-every", type=int, help="iterations between checkpoints")
    p.add_argument("--eval-windows", type=int, help="test windows scored (default: all)")
    p.add_argument("--timing-repeats", type=int, default=10)
    p.add_argument("--output", help="write the rows as JSON here (and the table as .txt)")
    a = p.parse_args(argv)
    cfg = config_from_args(a, skip=("query",))
    settings = {"num_workers": a.num_workers, "use_gpu": a.gpus}
    if a.checkpoint_every:
        settings["checkpoint_every"] = a.checkpoint_every
    rows = run_ablation(cfg, data=a.data, storage=a.storage, name=a.name, designs=a.designs,
                        seeds=a.seeds, eval_windows=a.eval_windows,
                        timing_repeats=a.timing_repeats, run_settings=settings,
                        address=a.address)
    print(format_table(rows))
    if a.output:
        write_table(rows, a.output)
    return rows
