"""Table 4 ablation: train the same budget with query none / global / local, then one table of
PSNR, SSIM, LPIPS (and MSE) on the last 10 future frames and the batch-1 inference time.

    python jobs/ablation.py --preset paper-kth --data shards/kth --storage runs --iterations 50000
    python jobs/ablation.py --preset tiny --data shards/tiny --storage runs --iterations 40
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _path  # noqa: E402,F401  (repo root on PYTHONPATH for Ray workers too)

import lmc  # noqa: E402
from lmc.ablation import DESIGNS, format_table, run_ablation, write_table  # noqa: E402


def with_overrides(cfg, overrides):
    """Fields given as strings on the command line, converted to the field's type."""
    d = cfg.to_dict()
    for k, v in overrides.items():
        if k not in d:
            raise lmc.ConfigError(f"unknown config field {k!r}; allowed: {sorted(d)}")
        d[k] = type(d[k])(v) if not isinstance(d[k], str) else v
    return lmc.LMCConfig.from_dict(d)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="shard folder (or s3://...)")
    p.add_argument("--storage", required=True, help="run storage root (path or s3://...)")
    p.add_argument("--name", default="ablation", help="runs are <storage>/<name>-<design>")
    p.add_argument("--preset", default="paper-kth", help=f"one of {', '.join(lmc.PRESETS)}")
    p.add_argument("--config", help="a config JSON (e.g. a sweep's best_config.json) instead of --preset")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set img_size=32 (repeatable)")
    p.add_argument("--iterations", type=int, help="training budget of every design")
    p.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--gpus", action="store_true", help="one GPU per worker")
    p.add_argument("--checkpoint-every", type=int, help="iterations between checkpoints")
    p.add_argument("--eval-windows", type=int, help="test windows scored (default: all)")
    p.add_argument("--timing-repeats", type=int, default=10)
    p.add_argument("--output", help="write the rows as JSON here (and the table as .txt)")
    a = p.parse_args(argv)
    base = lmc.LMCConfig.from_json(a.config) if a.config else lmc.preset(a.preset)
    overrides = dict(kv.split("=", 1) for kv in a.set)
    if a.iterations:
        overrides["iterations"] = a.iterations
    cfg = with_overrides(base, overrides)
    settings = {"num_workers": a.num_workers, "use_gpu": a.gpus}
    if a.checkpoint_every:
        settings["checkpoint_every"] = a.checkpoint_every
    rows = run_ablation(cfg, data=a.data, storage=a.storage, name=a.name, designs=a.designs,
                        eval_windows=a.eval_windows, timing_repeats=a.timing_repeats,
                        run_settings=settings)
    print(format_table(rows))
    if a.output:
        write_table(rows, a.output)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:   # config, data and storage errors
        sys.exit(f"error: {e}")
