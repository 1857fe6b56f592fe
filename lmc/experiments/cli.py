"""Command lines of the experiment jobs: jobs/tune_kth.py, jobs/tune_mmnist.py (a Ray Tune
sweep) and jobs/ablation.py (Table 4). Config flags as every job takes them (``lmc.cli``); the
run settings' flags (and the sweep's) generated from their dataclasses, as the training jobs'
are, with each job's own defaults (``SWEEP_RUN_DEFAULTS``, ``ABLATION_RUN_DEFAULTS``)."""
from __future__ import annotations

import argparse

from pipeline.cluster import add_address_flag

from ..cli import add_config_flags, add_settings_flags, config_from_args, settings_from_args

SWEPT = ("memory_slots", "short_len", "long_len", "lr")   # flags that take several values here


def tune(argv=None, *, default_preset: str, default_long_len: tuple, doc: str) -> dict:
    """Parse a tune_*.py command line and run the sweep."""
    from ..train.settings import RunSettings
    from .sweep import SWEEP_RUN_DEFAULTS, SweepSettings, SweepSpace, sweep

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    add_settings_flags(p, RunSettings, title="run settings (of every trial)",
                       defaults=SWEEP_RUN_DEFAULTS, helps={
                           "storage": "storage root (path or s3://), as for training",
                           "name": "the sweep lives in <storage>/<name>/, each trial's run in "
                                   "<storage>/<name>/train-<trial id>/",
                           "num_workers": "Ray Train workers per trial",
                           "checkpoint_every": "iterations between checkpoints (default: "
                                               "--eval-every)",
                           "test_windows": "cap on each trial's final test evaluation "
                                           "(default: --eval-windows)"})
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
    add_settings_flags(p, SweepSettings, skip=("run",), title="the search (Ray Tune, ASHA)")
    a = p.parse_args(argv)
    cfg = config_from_args(a, skip=SWEPT)
    space = SweepSpace(memory_slots=a.memory_slots, short_len=a.short_len or [cfg.short_len],
                       long_len=a.long_len, lr=a.lr, lr_log_uniform=not a.lr_list)
    settings = settings_from_args(a, SweepSettings, run=settings_from_args(a, RunSettings))
    return sweep(cfg, space, settings, address=a.address)


def ablation(argv=None, *, doc: str) -> list[dict]:
    """Parse jobs/ablation.py's command line, train the designs and print Table 4."""
    from ..train.settings import RunSettings
    from .ablation import ABLATION_RUN_DEFAULTS, DESIGNS, format_table, run_ablation, write_table

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    # --eval-windows is the ablation's own (the test windows scored); each run's validations
    # keep RunSettings' default
    add_settings_flags(p, RunSettings, skip=("eval_windows",), title="run settings (of every "
                       "design's run)", defaults=ABLATION_RUN_DEFAULTS, helps={
                           "storage": "run storage root (path or s3://)",
                           "name": "runs are <storage>/<name>-<design> (-s<seed> with --seeds)"})
    add_address_flag(p)
    add_config_flags(p, default_preset="paper-kth", skip=("query",))
    p.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    p.add_argument("--seeds", nargs="+", type=int,
                   help="train each design once per seed (table: mean +- std)")
    p.add_argument("--eval-windows", type=int, help="test windows scored (default: all)")
    p.add_argument("--timing-repeats", type=int, default=10)
    p.add_argument("--output", help="write the rows as JSON here (and the table as .txt)")
    a = p.parse_args(argv)
    cfg = config_from_args(a, skip=("query",))
    rows = run_ablation(cfg, settings_from_args(a, RunSettings, skip=("eval_windows",)),
                        designs=a.designs, seeds=a.seeds, eval_windows=a.eval_windows,
                        timing_repeats=a.timing_repeats, address=a.address)
    print(format_table(rows))
    if a.output:
        write_table(rows, a.output)
    return rows
