"""Does the Ray Train path learn like a plain PyTorch loop? Same model, data, seed and schedule
through (a) a plain loop with no Ray, (b) Ray Train with 1 worker, (c) Ray Train with 2 DDP
workers at the same global batch; the curves overlaid, with the baselines.

    python benchmarks/learning_parity.py --data SHARDS --preset small-kth \
        --config '{"img_size": 32}' --iterations 400 --output results/parity

All three run the one training loop (`lmc.train.loop`): (a) through `lmc.train.plain` in this
process (the train split read with pyarrow, each batch drawn uniformly from all windows), (b, c)
through `lmc.train.train` (Ray Data shards, DDP). Batches differ between the three (different
samplers), so curves are compared as curves: the validation MSE at each validation point, and
the training loss smoothed over `--smooth` iterations.
Writes parity.json, parity.csv and parity.png into --output.
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                os.environ.get("PYTHONPATH")) if p)


def settings(cfg, data: str, storage: str, name: str, workers: int, *, eval_every: int,
             eval_windows: int, threads: int):
    from lmc.train import RunSettings

    return RunSettings(data=data, storage=storage, name=name, num_workers=workers,
                       threads_per_worker=threads, checkpoint_every=cfg.iterations,
                       eval_every=eval_every, eval_windows=eval_windows,
                       test_windows=eval_windows, log_every=1, artifacts=False, max_failures=0)


def plain_loop(cfg, data: str, storage: str, **kw) -> dict:
    """The training loop in this process, no Ray (``lmc.train.plain``): metrics.json."""
    from lmc.train.plain import train_plain

    s = settings(cfg, data, storage, "parity-plain", 1, **kw)
    train_plain(cfg, s)
    with open(os.path.join(storage, s.name, "metrics.json")) as f:
        return json.load(f)


def ray_run(cfg, data: str, storage: str, workers: int, **kw) -> dict:
    from lmc.train import train

    return train(cfg, settings(cfg, data, storage, f"parity-{workers}w", workers, **kw),
                 verbose=False)


def smooth(values, k: int):
    import numpy as np

    v = np.asarray(values, dtype=float)
    if len(v) < k:
        return v
    return np.convolve(v, np.ones(k) / k, mode="valid")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="clip-pair shards (from jobs/prepare_*.py)")
    p.add_argument("--preset", default="small-kth")
    p.add_argument("--config", help="JSON object of config fields over the preset")
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--smooth", type=int, default=25)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--output", default="results/parity")
    args = p.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import ray

    import lmc

    cfg = lmc.preset(args.preset, iterations=args.iterations,
                     **(json.loads(args.config) if args.config else {}))
    cores = os.cpu_count() or 2
    kw = dict(eval_every=args.eval_every, eval_windows=args.eval_windows, threads=args.threads)
    with tempfile.TemporaryDirectory() as storage:
        runs = {"the loop without Ray": plain_loop(cfg, args.data, storage, **kw)}
        ray.init(num_cpus=cores, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
        for workers in (1, 2):
            runs[f"Ray Train, {workers} worker{'s' if workers > 1 else ''}"] = ray_run(
                cfg, args.data, storage, workers, **kw)
    ray.shutdown()

    os.makedirs(args.output, exist_ok=True)
    out = {"config": cfg.to_dict(), "data": args.data, "command": " ".join(sys.argv),
           "runs": {k: {"loss_history": v["loss_history"],
                        "validation_history": v["validation_history"]} for k, v in runs.items()}}
    with open(os.path.join(args.output, "parity.json"), "w") as f:
        json.dump(out, f, indent=1)
    names = list(runs)
    base = runs[names[0]]["validation_history"]
    with open(os.path.join(args.output, "parity.csv"), "w") as f:
        f.write("iteration," + ",".join(f"val_mse[{n}]" for n in names)
                + ",val_copy_last_mse,val_zeros_mse\n")
        for i, row in enumerate(base):
            cells = [runs[n]["validation_history"][i]["val_mse"]
                     if i < len(runs[n]["validation_history"]) else "" for n in names]
            f.write(f"{row['iteration']}," + ",".join(f"{c:.6g}" if c != "" else "" for c in cells)
                    + f",{row['val_copy_last_mse']:.6g},{row['val_zeros_mse']:.6g}\n")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for n in names:
        h = runs[n]["loss_history"]
        total = [r["loss_phase2"] for r in h]
        its = [r["iteration"] for r in h][len(h) - len(smooth(total, args.smooth)):]
        axes[0].plot(its, smooth(total, args.smooth), label=n, lw=1)
        v = runs[n]["validation_history"]
        axes[1].plot([r["iteration"] for r in v], [r["val_mse"] for r in v], marker="o",
                     markersize=3, label=n)
    for b, style in (("copy_last", "--"), ("zeros", ":")):
        axes[1].plot([r["iteration"] for r in base], [r[f"val_{b}_mse"] for r in base], style,
                     color="grey", label=lmc.baselines.BASELINES[b])
    axes[0].set_title(f"phase-2 training loss ({args.smooth}-iteration mean)")
    axes[0].set_yscale("log")
    axes[1].set_title("validation MSE per frame")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.output, "parity.png"), dpi=80)
    for n in names:
        v = runs[n]["validation_history"][-1]
        print(f"{n}: final val_mse {v['val_mse']:.4g} (copy-last {v['val_copy_last_mse']:.4g}, "
              f"all-zero {v['val_zeros_mse']:.4g})")
    print(f"wrote {args.output}/parity.json, parity.csv, parity.png")


if __name__ == "__main__":
    main()
