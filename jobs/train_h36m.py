r"""Train LMC-Memory on Human3.6M (RGB 64x64, 10->40) with Ray Train.

    python jobs/train_h36m.py --data shards/h36m --storage runs --num-workers 2
    ray job submit --working-dir . -- python jobs/train_h36m.py --data s3://bucket/h36m-shards \
        --storage s3://bucket/runs --num-workers 4 --gpus

Flags: `python jobs/train_h36m.py --help`. The same --name and --storage resume a run.
"""
import _job  # noqa: F401  (first: the checkout on the path, the error policy)

from lmc.train.cli import run


def main(argv=None):
    return run("h36m", argv)


if __name__ == "__main__":
    _job.run(main)
