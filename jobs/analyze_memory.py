"""Memory addressing analysis (paper §4.5, Figure 7): cosine similarity of the addressing vectors
of long clips (E_LMC) and short clips (E_MM), grouped by action, and the slot usage histogram.

    python jobs/analyze_memory.py --checkpoint runs/kth/checkpoint --data shards/kth --output fig7/
"""
import argparse

import _job  # noqa: F401  (first: the checkout on the path, the error policy)

from lmc.tools.analysis import analyze_memory


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint folder of this project, or the reference's .pt file")
    p.add_argument("--data", required=True, help="shard folder (or s3://...) with labelled test windows")
    p.add_argument("--output", required=True, help="folder for the heatmap, CSVs and summary")
    p.add_argument("--preset", help="config of a reference .pt file (paper-kth, ...)")
    p.add_argument("--max-per-class", type=int, default=8, help="test clips per class")
    p.add_argument("--reduce", choices=("flatten", "mean"), default="flatten",
                   help="flatten: one (queries x slots) vector per clip; mean: average over queries")
    p.add_argument("--center", action="store_true",
                   help="compare deviations from the uniform weight 1/slots (spreads the scale)")
    p.add_argument("--long-start", type=int, default=0, help="first frame of the long clip")
    p.add_argument("--label", default="action", help="shard column that names the class")
    p.add_argument("--threshold", type=float, help="slot weight counted as used (default 2/slots)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    a = p.parse_args(argv)
    analyze_memory(a.checkpoint, a.data, a.output, preset=a.preset,
                   max_per_class=a.max_per_class, reduce=a.reduce, long_start=a.long_start,
                   center=a.center, label=a.label, threshold=a.threshold, device=a.device)


if __name__ == "__main__":
    _job.run(main)
