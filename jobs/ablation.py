"""Table 4 ablation: train the same budget with query none / global / local, then one table of
PSNR, SSIM, LPIPS (and MSE) on the last 10 future frames and the batch-1 inference time.

    python jobs/ablation.py --preset paper-kth --data shards/kth --storage runs --iterations 50000
    python jobs/ablation.py --preset tiny --data shards/tiny --storage runs --iterations 40
"""
import _job  # noqa: F401  (first: the checkout on the path, the error policy)

from lmc.experiments.cli import ablation


def main(argv=None):
    return ablation(argv, doc=__doc__)


if __name__ == "__main__":
    _job.run(main)
