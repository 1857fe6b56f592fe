"""Any folder or s3:// prefix of videos (or of frame folders `video_x/frame_y.jpg`) -> shards.

    python jobs/prepare_videos.py --input clips/ --output shards/ --split train
    python jobs/prepare_videos.py --input ref_frames/ --output shards/   # train/ and test/ inside
    python jobs/prepare_videos.py --input h36m/ --output shards/ --layout h36m --channels 3
"""
import _job  # noqa: F401  (first: the checkout on the path, the error policy)

from pipeline.cli import run, shard_parser


def main(argv=None) -> dict:
    p = shard_parser(__doc__.splitlines()[0], img_size=64, channels=1)
    p.add_argument("--input", required=True, help="folder or s3:// prefix")
    p.add_argument("--split", choices=("train", "test"), default=None,
                   help="split of every input (default: first folder level, train/ or test/)")
    p.add_argument("--layout", choices=("folder", "h36m"), default="folder",
                   help="h36m: Human3.6M videos, split by subject (S1,S5-S8 / S9,S11)")
    args = p.parse_args(argv)

    def source():
        from pipeline import FolderSource, H36MSource

        if args.layout == "h36m":
            return H36MSource(args.input)
        return FolderSource(args.input, split=args.split)

    return run(args, source)


if __name__ == "__main__":
    _job.run(main)
