"""Scores of a committed result that go beside its checkpoint, on the test split of its shards.

    python results/score.py sample --checkpoint results/mmnist/checkpoint --data SHARDS \
        --protocol 10-10 --windows 16 --output results/mmnist
    python results/score.py per-class --checkpoint results/kth-like/checkpoint --data SHARDS \
        --protocol 10-20 --output results/kth-like/per_action.json

`sample`: the first N test windows (in the evaluation order) as uint8 `sample_windows.npz`, and
the checkpoint's and the baselines' means on exactly those windows as `sample_summary.json`;
`tests/test_results.py` evaluates the committed checkpoint on the committed windows and
compares with these numbers.
`per-class`: the model's and the baselines' means per class (e.g. KTH's action) as JSON: where
a model beats copy-last-frame and where it does not.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _scores(model, windows, protocol) -> dict:
    """{"model": means, "baselines": {name: means}, "verdict": {name: {"beats", "loses", "ties",
    "line"}}} on a (N, T, C, H, W) batch."""
    from lmc.scoring import score_windows, summarize_scores

    s = summarize_scores(score_windows(model, windows.split(16), [protocol]))
    name = protocol.name
    return {"model": s["protocols"][name]["mean"],
            "baselines": {b: v["mean"] for b, v in s["baselines"][name].items()},
            "verdict": s["verdict"][name]}


def sample(model, protocol, args) -> dict:
    import numpy as np
    import torch

    from lmc.scoring import test_windows

    windows = torch.cat(list(test_windows(args.data, short_len=protocol.short_len,
                                          out_len=protocol.out_len, batch_size=8,
                                          max_windows=args.windows)))
    pixels = (windows * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()  # (N,T,H,W,C)
    np.savez_compressed(os.path.join(args.output, "sample_windows.npz"), windows=pixels)
    out = {"protocol": protocol.name, "num_samples": len(windows), "data": args.data,
           **_scores(model, windows, protocol)}
    with open(os.path.join(args.output, "sample_summary.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


def per_class(model, protocol, args) -> dict:
    import torch

    import pipeline

    groups: dict[str, list] = {}
    for batch in pipeline.iter_test_windows(args.data, batch_size=32,
                                            short_len=protocol.short_len,
                                            out_len=protocol.out_len, labels=(args.label,)):
        for w, label in zip(batch["window"], batch[args.label]):
            groups.setdefault(label, []).append(w)
    out = {label: {"num_samples": len(ws), **_scores(model, torch.stack(ws), protocol)}
           for label, ws in sorted(groups.items())}
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("sample", "per-class"))
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--protocol", required=True)
    p.add_argument("--output", required=True, help="sample: a folder; per-class: a .json file")
    p.add_argument("--windows", type=int, default=16, help="sample: test windows kept")
    p.add_argument("--label", default="action", help="per-class: the shards' class column")
    args = p.parse_args()

    from lmc.checkpoint import load_model
    from lmc.protocols import get_protocol

    model, protocol = load_model(args.checkpoint), get_protocol(args.protocol)
    out = (sample if args.what == "sample" else per_class)(model, protocol, args)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
