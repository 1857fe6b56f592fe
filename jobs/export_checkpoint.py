"""Export a training checkpoint folder as a compact inference checkpoint: float16 weights and
the config, no optimizer state (half the bytes; `jobs/evaluate.py --checkpoint` and
`jobs/predict.py` read it back into a float32 model).

    python jobs/export_checkpoint.py runs/kth/checkpoint_000004000 results/kth-like/checkpoint
"""
import argparse

import _job  # noqa: F401  (first: the checkout on the path, the error policy)

import torch

from lmc.checkpoint import export_weights


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("source", help="a checkpoint folder of this project")
    p.add_argument("destination", help="folder to write model.pt and config.json into")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    a = p.parse_args(argv)
    out = export_weights(a.source, a.destination, getattr(torch, a.dtype))
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB, {a.dtype} weights)")


if __name__ == "__main__":
    _job.run(main)
