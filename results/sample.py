"""Commit a checkable sample of a result: the first N test windows (in the evaluation order) as
uint8 `sample_windows.npz`, and the checkpoint's and the baselines' means on exactly those
windows as `sample_summary.json`. `tests/test_results.py` evaluates the committed checkpoint on
the committed windows and compares with these numbers.

    python results/sample.py --checkpoint results/mmnist/checkpoint \
        --data SHARDS --protocol 10-10 --windows 16 --output results/mmnist
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--protocol", required=True)
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--output", required=True)
    args = p.parse_args()

    import numpy as np
    import torch

    from lmc.checkpoint import load_model
    from lmc.evaluate import resolve_protocol, score_windows, summarize_scores, test_windows

    protocol = resolve_protocol(args.protocol)
    windows = torch.cat(list(test_windows(args.data, short_len=protocol.short_len,
                                          out_len=protocol.out_len, batch_size=8,
                                          max_windows=args.windows)))
    pixels = (windows * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()  # (N,T,H,W,C)
    np.savez_compressed(os.path.join(args.output, "sample_windows.npz"), windows=pixels)
    model = load_model(args.checkpoint)
    scored = summarize_scores(score_windows(model, windows.split(4), [protocol]))
    name = protocol.name
    out = {"protocol": name, "num_samples": len(windows), "data": args.data,
           "model": scored["protocols"][name]["mean"],
           "baselines": {b: v["mean"] for b, v in scored["baselines"][name].items()},
           "verdict": scored["verdict"][name]}
    with open(os.path.join(args.output, "sample_summary.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
