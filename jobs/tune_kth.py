r"""Ray Tune sweep on KTH: memory slots, short/long clip lengths and learning rate, each trial a
Ray Train run, ASHA on the validation metric. Only valid length combinations are tried.

    python jobs/tune_kth.py --data shards/kth --storage runs --name kth-sweep --iterations 20000
    python jobs/tune_kth.py --preset tiny --img-size 32 --out-len 10 --data shards/tiny \
        --storage runs --memory-slots 4 8 --long-len 9 12 --iterations 8 --eval-every 2
"""
import _job  # noqa: F401  (first: the checkout on the path, the error policy)

from lmc.experiments.cli import tune


def main(argv=None):
    return tune(argv, default_preset="paper-kth", default_long_len=(10, 20, 30, 40), doc=__doc__)


if __name__ == "__main__":
    _job.run(main)
