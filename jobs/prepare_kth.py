"""KTH Action .avi files -> clip-pair shards (grayscale 128x128, persons 1-16 train, 17-25 test).

    python jobs/prepare_kth.py --input data/kth --output data/kth-shards
    python jobs/prepare_kth.py --input data/kth-synth --synthetic 4 --output data/kth-shards
    ray job submit --working-dir . -- python jobs/prepare_kth.py --input s3://b/kth --output s3://b/kth-shards
"""
import _job  # noqa: F401  (first: the checkout on the path, the error policy)

from pipeline.cli import run, shard_parser


def build_parser():
    p = shard_parser(__doc__.splitlines()[0], img_size=128, out_len=40)   # paper-kth: 10 -> 40
    p.add_argument("--input", required=True, help="folder or s3:// prefix of the .avi files")
    p.add_argument("--sequences", default=None,
                   help="KTH sequence file (default: <input>/00sequences.txt when present)")
    p.add_argument("--synthetic", type=int, default=None, metavar="N_PER_ACTION",
                   help="first write N KTH-like synthetic videos per action into --input")
    p.add_argument("--synthetic-frames", type=int, default=300,
                   help="frames per synthetic video (4 sub-sequences each, like KTH's)")
    return p


def main(argv=None) -> dict:
    p = build_parser()
    args = p.parse_args(argv)

    def source():
        from pipeline import KTHSource, write_kth_like

        if args.synthetic:
            write_kth_like(args.input, per_action=args.synthetic,
                           num_frames=args.synthetic_frames)
        return KTHSource(args.input, sequences=args.sequences)

    return run(args, source)


if __name__ == "__main__":
    _job.run(main)
