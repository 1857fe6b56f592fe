r"""Train LMC-Memory on Moving-MNIST (64x64, 10->30) with Ray Train.

    python jobs/train_mmnist.py                      # demo: generated one-digit data, small model at 32x32, minutes on a CPU
    python jobs/train_mmnist.py --data shards/mmnist --storage runs --num-workers 2
    ray job submit --working-dir . -- python jobs/train_mmnist.py --data s3://bucket/mmnist-shards \
        --storage s3://bucket/runs --num-workers 4 --gpus

Flags: `python jobs/train_mmnist.py --help`. The same --name and --storage resume a run.
"""
import _job  # noqa: F401  (first: the checkout on the path, the error policy)

from lmc.train.cli import run


def main(argv=None):
    return run("mmnist", argv)


if __name__ == "__main__":
    _job.run(main)
