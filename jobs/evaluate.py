"""Evaluate a checkpoint on test shards: MSE, MAE, PSNR, SSIM, LPIPS, per-timestep curves and
inference time per sequence (docs/design.md §6).

    python jobs/evaluate.py --checkpoint runs/kth/checkpoint --data shards/kth --protocol 10-40
    python jobs/evaluate.py --checkpoint kth_model.pt --preset paper-kth --data shards/kth
"""
import argparse

import _job  # noqa: F401  (first: the checkout on the path, the error policy)

from lmc.tools.evaluate import evaluate


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint folder of this project, or the reference's .pt file")
    p.add_argument("--data", required=True, help="shard folder (or s3://...) with a test split")
    p.add_argument("--protocol", action="append", dest="protocols", metavar="S-K",
                   help="10-10, 10-20, 10-30, 10-40, 10-40-last10 or any S-K[-lastN]; repeatable "
                        "(default: the dataset's protocols that its windows hold)")
    p.add_argument("--output", help="folder for summary.json and curves_<protocol>.csv/.png")
    p.add_argument("--preset", help="config of a reference .pt file (paper-kth, paper-mmnist, ...)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--max-samples", type=int, help="evaluate only the first N test windows")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--timing-repeats", type=int, default=10,
                   help="timed batch-1 runs per horizon after 3 warm-up runs (0: no timing)")
    a = p.parse_args(argv)
    evaluate(a.checkpoint, a.data, protocols=a.protocols, output=a.output, preset=a.preset,
             batch_size=a.batch_size, device=a.device, lpips=not a.no_lpips,
             max_samples=a.max_samples, timing=a.timing_repeats > 0,
             timing_repeats=max(1, a.timing_repeats))


if __name__ == "__main__":
    _job.run(main)
