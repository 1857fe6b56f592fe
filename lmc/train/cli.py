"""Command line of the training jobs (`jobs/train_kth.py`, `train_mmnist.py`, `train_h36m.py`).

Each job is `run("kth", argv)`: one flag per run setting (generated from ``RunSettings``'
fields, ``lmc.cli.add_settings_flags``), a config from a preset plus the config flags every job
shares (`lmc.cli`, validated once), a few flags of the job's own, and `lmc.train.train`. Without
`--data`, the KTH and Moving-MNIST jobs make a small synthetic dataset in a local cache and
train a small model on it (`DEMO`): the demo that runs on a laptop in minutes.
"""
from __future__ import annotations

import argparse
import os

from pipeline.cluster import add_address_flag

from ..cli import add_config_flags, add_settings_flags, config_from_args, settings_from_args
from ..config import ConfigError, LMCConfig
from .settings import RunSettings

DATASETS = {  # dataset -> paper preset
    "kth": "paper-kth", "mmnist": "paper-mmnist", "h36m": "paper-h36m"}
# dataset -> (preset, overrides) of the demo without --data: 32x32 frames so that a 2-core
# CPU gets past the blank-frame phase in minutes (see results/ for longer runs).
DEMO = {"kth": ("small-kth", {"img_size": 32, "iterations": 1800}),
        "mmnist": ("small-mmnist", {"iterations": 1500})}
DEMO_DATA_VERSION = "v3"   # in the cache folder's name: a new one when demo_data changes, so no stale cache is reused
CACHE = os.environ.get("LMC_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lmc-memory"))


def build_parser(dataset: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"jobs/train_{dataset}.py",
        description=f"Train LMC-Memory on {dataset} with Ray Train (DDP). Without --data: a "
                    "synthetic demo dataset in the local cache and a small model."
                    if dataset != "h36m" else "Train LMC-Memory on Human3.6M with Ray Train.")
    add_settings_flags(p, RunSettings, title="run settings", defaults={
        "data": None, "storage": "runs", "name": None}, helps={
        "data": "clip-pair shards (path or s3://) from jobs/prepare_*.py"
                + (" (default: synthetic demo data in the local cache)" if dataset in DEMO
                   else ""),
        "name": "run name; the same name and storage resume the run (default: "
                "<dataset>-<preset>)"})
    add_address_flag(p)
    add_config_flags(p, default_preset=None, preset_help=(
        f"{DATASETS[dataset]}; " + (f"{DEMO[dataset][0]} at 32x32 without --data" if dataset in DEMO
                                    else "")).rstrip("; "))
    p.add_argument("--allow-change", metavar="FIELD[,FIELD]", default="",
                   help="resume even though these config fields (or 'data') differ from the "
                        "run's checkpoint; applied from the resumed iteration on (the "
                        "optimizer's lr too) and recorded in metrics.json's attempts")
    p.add_argument("--force-unlock", action="store_true",
                   help="take the run folder's lease even if another job seems to hold it "
                        "(only when that job is surely gone; a lease without a heartbeat for "
                        "60 s is taken over automatically)")
    p.add_argument("--trace-parameters", metavar="DIR",
                   help="debugging: each rank writes hashes of its parameters after every "
                        "optimizer step to DIR/rank<r>-start<i>.json (DDP replicas must agree)")
    return p


def model_config(args, dataset: str) -> LMCConfig:
    """The paper preset of ``dataset`` (or --preset), or the demo's small one without --data."""
    demo = args.data is None and args.preset is None and dataset in DEMO
    name = args.preset or (DEMO[dataset][0] if demo else DATASETS[dataset])
    return config_from_args(args, preset_name=name, overrides=DEMO[dataset][1] if demo else None)


def demo_data(dataset: str, cfg: LMCConfig, cache: str = CACHE) -> str:
    """A small synthetic dataset for `cfg` in the cache (made once; later runs reuse it)."""
    import pipeline
    from pipeline import ShardConfig

    shard_cfg = ShardConfig(short_len=cfg.short_len, out_len=cfg.out_len, img_size=cfg.img_size,
                            channels=cfg.channels, train_stride=5)
    tag = f"{cfg.short_len}-{cfg.out_len}-{cfg.img_size}px-{cfg.channels}ch"
    out = os.path.join(cache, f"{dataset}-demo-{DEMO_DATA_VERSION}-{tag}")
    if os.path.exists(os.path.join(out, "manifest.json")):
        return out
    if dataset == "kth":
        videos = os.path.join(cache, f"kth-synthetic-videos-{DEMO_DATA_VERSION}")
        if not os.path.exists(os.path.join(videos, "00sequences.txt")):
            print(f"writing synthetic KTH-like videos to {videos} ...")
            pipeline.write_kth_like(videos, per_action=16, num_frames=150)
        source = pipeline.KTHSource(videos)
    elif dataset == "mmnist":
        canvas = 64 if 64 % cfg.img_size == 0 else None   # the classic canvas, area-averaged
        source = pipeline.MovingMNISTSource(train_sequences=2000, test_sequences=128,
                                            num_digits=1, canvas_size=canvas)
    else:
        raise SystemExit(f"train_{dataset}: --data is required (no synthetic {dataset} data)")
    pipeline.prepare(source, out, shard_cfg)
    return out


def run(dataset: str, argv=None) -> dict:
    """Parse, validate, train; returns metrics.json. Bad input raises (the job prints it)."""
    from .driver import train

    args = build_parser(dataset).parse_args(argv)
    if args.name is not None and not args.name.strip():
        raise ConfigError("--name '': a run name must be a non-empty folder name (leave the "
                          "flag out for the default)")
    cfg = model_config(args, dataset)
    settings = settings_from_args(   # validated before any data is made or Ray starts
        args, RunSettings, data=args.data or "(demo data)",
        name=args.name or (f"{dataset}-{args.preset}" if args.preset else
                           f"{dataset}-{DATASETS[dataset]}" if args.data else f"{dataset}-demo"))
    if args.data is None:
        import dataclasses

        from pipeline.cluster import connect
        connect(args.address, configure_logging=False)
        settings = dataclasses.replace(settings, data=demo_data(dataset, cfg))
    from .hooks import TraceParameters
    hooks = [TraceParameters(args.trace_parameters)] if args.trace_parameters else []
    allow = tuple(n.strip() for n in args.allow_change.split(",") if n.strip())
    metrics = train(cfg, settings, hooks=hooks, address=args.address, allow_change=allow,
                    force_unlock=args.force_unlock)
    if args.data is None:
        print_demo_hint(metrics)
    return metrics


def print_demo_hint(metrics: dict) -> None:
    """After a demo run: unless the model beats both baselines on every metric (the verdict
    the summary printed, ``lmc.baselines.verdict``), say so and point to the longer runs."""
    from ..baselines import beats_every_baseline, verdict

    if not metrics.get("test"):
        return
    judged = verdict(metrics["test"]["mean"],
                     {b: rep["mean"] for b, rep in metrics.get("baselines", {}).items()})
    if not beats_every_baseline(judged):
        print("The demo's few CPU minutes do not get this model past both baselines on every "
              "metric (the verdict lines above say where it does not); results/ (README, "
              "'Results') holds longer runs, their numbers and the commands that made them.")
