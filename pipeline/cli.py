"""What the `jobs/prepare_*.py` entry points share: shard flags, config building, the run."""
from __future__ import annotations

import argparse
import json
import sys

from pipeline.cluster import add_address_flag
from pipeline.config import ShardConfig


def shard_parser(description: str, *, img_size: int, channels: int = 1, out_len: int = 10,
                 test_out_len: int | None = None) -> argparse.ArgumentParser:
    """A parser with --output and the ShardConfig flags, defaulting to a dataset's protocol."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--output", required=True, help="shard folder: a path or s3://bucket/prefix")
    p.add_argument("--short-len", type=int, default=10, help="frames the model sees")
    p.add_argument("--out-len", type=int, default=out_len, help="frames predicted (train rows)")
    p.add_argument("--test-out-len", type=int, default=test_out_len,
                   help="frames predicted in test rows (default: --out-len)")
    p.add_argument("--long-len", type=int, default=None, help="long clip length to record")
    p.add_argument("--img-size", type=int, default=img_size)
    p.add_argument("--channels", type=int, default=channels, choices=(1, 3),
                   help="1 = BT.601 luma, 3 = RGB")
    p.add_argument("--train-stride", type=int, default=10, help="frames between train windows")
    p.add_argument("--frame-step", type=int, default=1, help="keep every k-th frame")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dataset prepared with a different config")
    p.add_argument("--summary-json", default=None, help="also write the summary dict here")
    add_address_flag(p)
    return p


def config_from_args(args: argparse.Namespace) -> ShardConfig:
    return ShardConfig(short_len=args.short_len, out_len=args.out_len,
                       test_out_len=args.test_out_len, long_len=args.long_len,
                       img_size=args.img_size, channels=args.channels,
                       train_stride=args.train_stride, frame_step=args.frame_step)


def run(args: argparse.Namespace, make_source) -> dict:
    """Validate (config, then source and its listing) before Ray starts, then prepare. Bad
    input raises ValueError / OSError naming the flag or file (the job prints it)."""
    from pipeline.preparation import prepare

    summary = prepare(make_source(), args.output, config_from_args(args),
                      overwrite=args.overwrite, address=args.address)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=1)
    sys.stdout.flush()
    return summary
