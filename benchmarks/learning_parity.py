"""Does the Ray Train path learn like a plain PyTorch loop? Same model, data, seed and schedule
through (a) a plain loop with no Ray, (b) Ray Train with 1 worker, (c) Ray Train with 2 DDP
workers at the same global batch; the curves overlaid, with the baselines.

    python benchmarks/learning_parity.py --data SHARDS --preset small-kth \
        --config '{"img_size": 32}' --iterations 400 --output results/parity

The plain loop reads the train split with pyarrow (`pipeline.iter_test_windows(split="train")`),
draws each batch uniformly from all windows with its own RNG and the long-clip offset r as
docs/design.md §4 says, and calls `lmc.MemoryAlignment.step`: Algorithm 1 with nothing around
it. The Ray runs go through `lmc.train.train` (Ray Data shards, DDP, checkpoints). Batches differ
between the three (different samplers), so curves are compared as curves: the validation MSE at
each validation point, and the training loss smoothed over `--smooth` iterations.
Writes parity.json, parity.csv and parity.png into --output.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                os.environ.get("PYTHONPATH")) if p)


def plain_loop(cfg, data: str, *, eval_every: int, eval_windows: int, threads: int) -> dict:
    """Algorithm 1 on the train split with no Ray: {"loss_history", "validation_history"}."""
    import numpy as np
    import torch

    import lmc
    import pipeline
    from lmc.protocols import protocol_for
    from lmc.scoring import score_windows, summarize_scores, test_windows, validation_metrics

    torch.set_num_threads(threads)
    train = torch.cat([b["window"] for b in pipeline.iter_test_windows(
        data, batch_size=64, split="train", short_len=cfg.short_len, out_len=cfg.out_len)])
    protocol = protocol_for(cfg.short_len, pipeline.DatasetFacts.read(data).test_out_len)
    torch.manual_seed(cfg.seed)
    model = lmc.LMCModel(cfg)
    align = lmc.MemoryAlignment(model)
    rng = np.random.default_rng(cfg.seed)
    losses, val = [], []
    t0 = time.perf_counter()
    for it in range(1, cfg.iterations + 1):
        idx = torch.from_numpy(rng.choice(len(train), cfg.batch_size, replace=False))
        r = int(rng.integers(0, cfg.window_len - cfg.long_len + 1))      # docs/design.md §4
        losses.append({"iteration": it, **align.step(train[idx], long_start=r)})
        if it % eval_every == 0 or it == cfg.iterations:
            windows = test_windows(data, short_len=protocol.short_len, out_len=protocol.out_len,
                                   batch_size=8, max_windows=eval_windows)
            s = summarize_scores(score_windows(model, windows, [protocol]))
            row = {"iteration": it, **validation_metrics(s["protocols"][protocol.name],
                                                         s["baselines"][protocol.name])}
            val.append(row)
            print(f"plain loop: iteration {it}: val_mse {row['val_mse']:.4g} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"loss_history": losses, "validation_history": val}


def ray_run(cfg, data: str, storage: str, workers: int, *, eval_every: int, eval_windows: int,
            threads: int) -> dict:
    from lmc.train import RunSettings, train

    s = RunSettings(data=data, storage=storage, name=f"parity-{workers}w", num_workers=workers,
                    threads_per_worker=threads, checkpoint_every=cfg.iterations,
                    eval_every=eval_every, eval_windows=eval_windows, test_windows=eval_windows,
                    log_every=1, artifacts=False, max_failures=0)
    return train(cfg, s, verbose=False)


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
    runs = {"plain PyTorch loop": plain_loop(cfg, args.data, eval_every=args.eval_every,
                                             eval_windows=args.eval_windows, threads=args.threads)}
    ray.init(num_cpus=cores, include_dashboard=False, configure_logging=False,
             log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        for workers in (1, 2):
            runs[f"Ray Train, {workers} worker{'s' if workers > 1 else ''}"] = ray_run(
                cfg, args.data, storage, workers, eval_every=args.eval_every,
                eval_windows=args.eval_windows, threads=args.threads)
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
