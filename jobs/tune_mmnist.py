r"""Ray Tune sweep on Moving-MNIST: memory slots, short/long clip lengths and learning rate, each
trial a Ray Train run, ASHA on the validation metric. Only valid length combinations are tried.

    python jobs/tune_mmnist.py --data shards/mmnist --storage runs --name mmnist-sweep --iterations 20000
    python jobs/tune_mmnist.py --preset tiny --img-size 32 --out-len 10 --data shards/tiny \
        --storage runs --memory-slots 4 8 --long-len 9 12 --iterations 8 --eval-every 2
"""
import _job  # noqa: F401  (first: the checkout on the path, the error policy)

from lmc.experiments.cli import tune


def main(argv=None):
    return tune(argv, default_preset="paper-mmnist", default_long_len=(10, 20, 30), doc=__doc__)


if __name__ == "__main__":
    _job.run(main)
