"""Table 4 ablation: train the same budget with query none / global / local, then one table of
PSNR, SSIM, LPIPS (and MSE) on the last 10 future frames and the batch-1 inference time.

    python jobs/ablation.py --preset paper-kth --data shards/kth --storage runs --iterations 50000
    python jobs/ablation.py --preset tiny --data shards/tiny --storage runs --iterations 40
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _path  # noqa: E402,F401  (repo root on PYTHONPATH for Ray workers too)

from lmc.tune_cli import add_config_args, config_from_args  # noqa: E402
from lmc.ablation import DESIGNS, format_table, run_ablation, write_table  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="shard folder (or s3://...)")
    p.add_argument("--storage", required=True, help="run storage root (path or s3://...)")
    p.add_argument("--name", default="ablation", help="runs are <storage>/<name>-<design>")
    add_config_args(p, default_preset="paper-kth")
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
    cfg = config_from_args(a)
    settings = {"num_workers": a.num_workers, "use_gpu": a.gpus}
    if a.checkpoint_every:
        settings["checkpoint_every"] = a.checkpoint_every
    rows = run_ablation(cfg, data=a.data, storage=a.storage, name=a.name, designs=a.designs,
                        seeds=a.seeds,
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
