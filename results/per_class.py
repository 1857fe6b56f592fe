"""Scores per class (e.g. KTH's action) of a checkpoint and of the baselines on the test split:
where a model beats copy-last-frame and where it does not.

    python results/per_class.py --checkpoint results/kth-like/checkpoint --data SHARDS \
        --protocol 10-20 --output results/kth-like/per_action.json
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
    p.add_argument("--label", default="action", help="the shards' column that names the class")
    p.add_argument("--output", required=True, help="a .json file")
    args = p.parse_args()

    import pyarrow.parquet as pq
    import torch

    import pipeline
    from lmc.checkpoint import load_model
    from lmc.evaluate import resolve_protocol, score_windows, summarize_scores
    from pipeline.storage import Location

    protocol = resolve_protocol(args.protocol)
    loc = Location.of(args.data)
    labels = {}
    for shard in pipeline.read_manifest(args.data)["shards"]:
        if shard["split"] == "test":
            t = pq.read_table(loc.fs.open_input_file(loc.path(shard["path"])),
                              columns=["video_id", "start", args.label])
            labels.update(zip(zip(t["video_id"].to_pylist(), t["start"].to_pylist()),
                              t[args.label].to_pylist()))
    groups: dict[str, list] = {}
    for batch in pipeline.iter_test_windows(args.data, batch_size=32,
                                            short_len=protocol.short_len,
                                            out_len=protocol.out_len):
        for w, key in zip(batch["window"], zip(batch["video_id"], batch["start"])):
            groups.setdefault(labels[key], []).append(w)
    model = load_model(args.checkpoint)
    out = {}
    for label, windows in sorted(groups.items()):
        s = summarize_scores(score_windows(model, torch.stack(windows).split(16), [protocol]))
        name = protocol.name
        out[label] = {"num_samples": len(windows), "model": s["protocols"][name]["mean"],
                      "baselines": {b: v["mean"] for b, v in s["baselines"][name].items()}}
        m, c = out[label]["model"], out[label]["baselines"]["copy_last"]
        print(f"{label:<14}{len(windows):>5}  model MSE {m['mse']:7.3f} PSNR {m['psnr']:6.2f}"
              f"  | copy-last MSE {c['mse']:7.3f} PSNR {c['psnr']:6.2f}")
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
