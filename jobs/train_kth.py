r"""Train LMC-Memory on KTH Action (grayscale 128x128, 10->40; persons 1-16 train, 17-25 test) with Ray Train.

    python jobs/train_kth.py                      # demo: synthetic data, small model at 32x32, ~9 min on 2 CPU cores
    python jobs/train_kth.py --data shards/kth --storage runs --num-workers 2
    ray job submit --working-dir . -- python jobs/train_kth.py --data s3://bucket/kth-shards \
        --storage s3://bucket/runs --num-workers 4 --gpus

Flags: `python jobs/train_kth.py --help`. The same --name and --storage resume a run.
"""
import _job  # noqa: F401  (first: the checkout on the path, the error policy)

from lmc.train.cli import run


def main(argv=None):
    return run("kth", argv)


if __name__ == "__main__":
    _job.run(main)
