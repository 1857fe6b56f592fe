"""Command-line parsing shared by jobs/tune_kth.py, jobs/tune_mmnist.py and jobs/ablation.py."""
from __future__ import annotations

import argparse
import json
import os
import sys

from .config import PRESETS, ConfigError, LMCConfig, preset


def add_config_args(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--preset", default=default_preset, help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--config", help="JSON object or .json file of config fields over the preset "
                                    "(e.g. a sweep's best_config.json), as jobs/train_*.py take it")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set img_size=32 (repeatable)")
    p.add_argument("--iterations", type=int, help="training iterations (per trial / design)")


def config_from_args(a: argparse.Namespace) -> LMCConfig:
    """--preset, then the --config fields, --set FIELD=VALUE and --iterations (validated once)."""
    d = preset(a.preset).to_dict()
    if a.config:
        text = open(a.config).read() if os.path.isfile(a.config) else a.config
        extra = json.loads(text)
        unknown = sorted(set(extra) - set(d))
        if unknown:
            raise ConfigError(f"--config: unknown config field(s) {unknown}; allowed: {sorted(d)}")
        d.update(extra)
    for kv in a.set:
        key, sep, value = kv.partition("=")
        if not sep or key not in d:
            raise ConfigError(f"--set {kv!r}: expected FIELD=VALUE with FIELD one of {sorted(d)}")
        d[key] = value if isinstance(d[key], str) else type(d[key])(value)
    if a.iterations:
        d["iterations"] = a.iterations
    return LMCConfig.from_dict(d)


def main(default_preset: str, default_long_len: tuple, doc: str, argv=None) -> None:
    """Parse a tune_*.py command line and run the sweep."""
    from .tune import SweepSettings, SweepSpace, sweep

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="shard folder (or s3://...)")
    p.add_argument("--storage", required=True, help="storage root (path or s3://...), as for training")
    p.add_argument("--name", default="sweep", help="the sweep lives in <storage>/<name>/")
    add_config_args(p, default_preset)
    p.add_argument("--slots", type=int, nargs="+", default=[25, 50, 100, 200],
                   help="memory slot sizes")
    p.add_argument("--short-len", type=int, nargs="+", help="short clip lengths (default: the config's)")
    p.add_argument("--long-len", type=int, nargs="+", default=list(default_long_len),
                   help="long clip lengths (combinations with long_len > short_len + out_len "
                        "or < 9 are skipped)")
    p.add_argument("--lr", type=float, nargs="+", default=[1e-4, 1e-3],
                   help="two values: log-uniform range; with --lr-list: values grid-searched")
    p.add_argument("--lr-list", action="store_true", help="treat --lr as a list of choices")
    p.add_argument("--num-samples", type=int, default=1, help="repeats of the grid (lr draws per combination)")
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
    try:
        cfg = config_from_args(a)
        space = SweepSpace(memory_slots=a.slots, short_len=a.short_len or [cfg.short_len],
                           long_len=a.long_len, lr=a.lr, lr_log_uniform=not a.lr_list)
        settings = SweepSettings(
            data=a.data, storage=a.storage, name=a.name, num_samples=a.num_samples,
            num_workers=a.num_workers, cpus_per_worker=a.cpus_per_worker, use_gpu=a.gpus,
            max_concurrent_trials=a.max_concurrent_trials, metric=a.metric,
            eval_every=a.eval_every, eval_windows=a.eval_windows, grace_period=a.grace_period,
            reduction_factor=a.reduction_factor, trial_retries=a.trial_retries)
        sweep(cfg, space, settings)
    except (ValueError, FileNotFoundError) as e:    # config, space, data and storage errors
        sys.exit(f"error: {e}")
