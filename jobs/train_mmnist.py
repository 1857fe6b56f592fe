r"""Train LMC-Memory on Moving-MNIST (64x64, 10->30) with Ray Train.

    python jobs/train_mmnist.py                      # demo: generated one-digit data, small model at 32x32, minutes on a CPU
    python jobs/train_mmnist.py --data shards/mmnist --storage runs --num-workers 2
    ray job submit --working-dir . -- python jobs/train_mmnist.py --data s3://bucket/mmnist-shards \
        --storage s3://bucket/runs --num-workers 4 --gpus

Flags: `python jobs/train_mmnist.py --help`. The same --name and --storage resume a run.
"""
import _path  # noqa: F401  (repo root on sys.path for `python jobs/...`)

from lmc.train_cli import run

if __name__ == "__main__":
    run("mmnist")
