r"""Predict the future frames of a video file (any format decord reads) or a folder of frames.

    python jobs/predict.py --checkpoint runs/kth/checkpoint --input person17_walking_d1_uncomp.avi \
        --output pred/ --out-len 40

Writes pred/frame_NNN.png (the predicted frames), strip.png (input | ground truth | prediction)
and strip.gif (the same, animated).
"""
import argparse
import textwrap

import _job  # noqa: F401  (first: the checkout on the path, the error policy)

from lmc.tools.predict import MAX_OUT_LEN, OUT_LEN_LIMIT_WHY, predict


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint folder of this project, or the reference's .pt file")
    p.add_argument("--input", required=True, help="a video file, or a folder of frame images")
    p.add_argument("--output", required=True, help="folder for the PNG frames, strip and GIF")
    p.add_argument("--out-len", type=int,
                   help=textwrap.fill(f"frames to predict, 1 to {MAX_OUT_LEN} (default: the "
                                      f"config's out_len). Why a limit: {OUT_LEN_LIMIT_WHY}", 60))
    p.add_argument("--start", type=int, default=0, help="first input frame (0-based)")
    p.add_argument("--preset", help="config of a reference .pt file (paper-kth, paper-mmnist, ...)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    a = p.parse_args(argv)
    predict(a.checkpoint, a.input, a.output, out_len=a.out_len, start=a.start, preset=a.preset,
            device=a.device)


if __name__ == "__main__":
    _job.run(main)
