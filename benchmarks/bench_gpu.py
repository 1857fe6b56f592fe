"""GPU benchmark: the per-frame implementation (benchmarks/naive_model.py) against this model in
fp32, bf16 autocast, bf16 + channels_last (the training default's layout), bf16 + regional
compile and bf16 + CUDA-graph rollout; prints one JSON.

    python benchmarks/bench_gpu.py                        # any CUDA machine, < 5 minutes
    python benchmarks/bench_gpu.py --batches 16 128 --budget-s 210
    python benchmarks/bench_gpu.py --cpu-smoke            # tiny preset on CPU, seconds (automatic without CUDA)

For each batch: a training iteration (Algorithm 1, both phases) and a 10->30 inference at
batch 1 and at that batch. Each entry has the median and every timed run (after one untimed
first call, reported as ``first_call_s``: for compile it holds the compilation), the peak GPU
memory, and the achieved TFLOP/s from the FLOPs that benchmarks/flops.py counts. Whatever the
time budget leaves out is listed as skipped, never silently dropped. Training under CUDA graphs
is not offered (see lmc/accel.py); its rows say so.
"""
import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import lmc  # noqa: E402
from bench_model import BF16, autocast, naive_train_step  # noqa: E402
from flops import per_sample  # noqa: E402
from lmc.accel import GraphedRollout, compile_problem  # noqa: E402
from naive_model import NaiveLMC  # noqa: E402


class Bench:
    def __init__(self, device, repeats: int, budget_s: float):
        self.device, self.repeats, self.deadline = device, repeats, time.perf_counter() + budget_s
        self.rows = []

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline

    def note(self, task: str, batch: int, mode: str, **why):
        """A row of this model that was not measured: ``skipped=`` or ``error=`` says why."""
        self.rows.append({"task": task, "batch": batch, "impl": "lmc", "mode": mode, **why})

    def measure(self, task: str, batch: int, impl: str, mode: str, fn, flops: float | None,
                **extra):
        row = {"task": task, "batch": batch, "impl": impl, "mode": mode, **extra}
        if self.out_of_time():
            self.rows.append({**row, "skipped": "time budget spent"})
            return
        try:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            self.sync()
            t = time.perf_counter()
            fn()                                  # first call: allocation, autotuning, compile
            self.sync()
            row["first_call_s"] = time.perf_counter() - t
            times = []
            for _ in range(self.repeats):
                t = time.perf_counter()
                fn()
                self.sync()
                times.append(time.perf_counter() - t)
        except Exception as e:                    # e.g. out of memory at batch 128: say so
            self.rows.append({**row, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            return
        med = statistics.median(times)
        row.update(median_s=med, times_s=times,
                   tflops=flops / med / 1e12 if flops else None,
                   peak_mem_gib=(torch.cuda.max_memory_allocated() / 2 ** 30
                                 if self.device.type == "cuda" else None))
        self.rows.append(row)

    def speedups(self):
        """speedup = naive fp32 median / this median, within each (task, batch)."""
        base = {(r["task"], r["batch"]): r["median_s"] for r in self.rows
                if r["impl"] == "naive" and "median_s" in r}
        for r in self.rows:
            b = base.get((r["task"], r["batch"]))
            if b and "median_s" in r:
                r["speedup_vs_naive"] = b / r["median_s"]


def models(cfg, device, compiled: bool):
    torch.manual_seed(0)
    model = lmc.LMCModel(cfg).to(device)
    if compiled:
        model.compile_regions()
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper-mmnist")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 128])
    ap.add_argument("--out-len", type=int, default=30, help="inference horizon (10 -> 30)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=210,
                    help="start no measurement after this (one started finishes: a compile may "
                         "take a minute or two)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny preset, batch 2, one repeat on CPU (automatic without CUDA)")
    ap.add_argument("--smoke-compile", action="store_true",
                    help="also compile in the CPU smoke run (inductor on CPU takes minutes)")
    args = ap.parse_args()

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:   # a check that every path runs, not a measurement
        args.preset, args.batches, args.repeats = "tiny", [2], 1
    else:
        torch.backends.cudnn.benchmark = True
    cfg = lmc.preset(args.preset, warmup_iterations=0)
    train_flops, _ = per_sample(cfg)
    _, infer_flops = per_sample(lmc.preset(args.preset, warmup_iterations=0, out_len=args.out_len,
                                           long_len=min(cfg.long_len, cfg.short_len + args.out_len)))
    why_not_compile = compile_problem(device.type)
    if not cuda and not args.smoke_compile:
        why_not_compile = why_not_compile or "skipped in the CPU smoke run (--smoke-compile)"
    bench = Bench(device, args.repeats, args.budget_s)
    s, k = cfg.short_len, cfg.out_len
    eager = models(cfg, device, compiled=False)
    naive = NaiveLMC(eager).to(device)
    eager_cl = models(cfg, device, compiled=False).to_channels_last()
    compiled = None if why_not_compile else models(cfg, device, compiled=True)

    for batch in args.batches:
        window = torch.rand(batch, s + k, cfg.channels, cfg.img_size, cfg.img_size, device=device)
        short, long, target = window[:, :s], window[:, :cfg.long_len], window[:, s:]
        flops = train_flops * batch
        opt = torch.optim.Adam(naive.parameters(), lr=cfg.lr)
        bench.measure("train", batch, "naive", "fp32",
                      lambda: naive_train_step(naive, opt, short, long, target), flops)
        for mode, model, dtype in (("fp32", eager, None), ("bf16", eager, BF16),
                                   ("bf16+channels_last", eager_cl, BF16),
                                   ("compile+bf16", compiled, BF16)):
            if model is None:
                bench.note("train", batch, mode, skipped=why_not_compile)
                continue
            align = lmc.MemoryAlignment(model, lr=cfg.lr, autocast_dtype=dtype)
            bench.measure("train", batch, "lmc", mode,
                          lambda: align.step(window, long_start=0), flops)
        bench.note("train", batch, "graphs",
                   skipped="training is not graph-captured (lmc/accel.py says why)")

        for n in sorted({1, batch}):
            clip = short[:n]
            flops = infer_flops * n
            task = f"infer {s}->{args.out_len}"
            if any(r["task"] == task and r["batch"] == n for r in bench.rows):
                continue                           # batch 1 is measured once
            with torch.no_grad():
                bench.measure(task, n, "naive", "fp32",
                              lambda: naive(clip, out_len=args.out_len), flops)
            for mode, model, dtype, graphed in (
                    ("fp32", eager, None, False), ("bf16", eager, BF16, False),
                    ("bf16+channels_last", eager_cl, BF16, False),
                    ("compile+bf16", compiled, BF16, False), ("graphs+bf16", eager, BF16, True),
                    ("compile+graphs+bf16", compiled, BF16, True)):
                if model is None:
                    bench.note(task, n, mode, skipped=why_not_compile)
                    continue
                if graphed:
                    t = time.perf_counter()
                    rollout = _graphed(bench, task, n, mode, model, args.out_len, dtype)
                    if rollout is not None:
                        bench.measure(task, n, "lmc", mode, lambda: rollout(clip), flops,
                                      capture_s=time.perf_counter() - t)
                else:
                    bench.measure(task, n, "lmc", mode,
                                  lambda: _infer(model, clip, args.out_len, dtype), flops)
    bench.speedups()
    print(json.dumps({
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
        "cuda": cuda, "torch": torch.__version__, "preset": args.preset,
        "parameters": eager.num_parameters(),
        "gflop_per_sample": {"train_iteration": train_flops / 1e9,
                             f"infer_{s}_{args.out_len}": infer_flops / 1e9},
        "cudnn_tf32": torch.backends.cudnn.allow_tf32 if cuda else None,
        "graphs_captured": any("graphs" in r["mode"] and r["task"].startswith("infer")
                               and "median_s" in r for r in bench.rows) and cuda,
        "compile": why_not_compile or "per-timestep regions",
        "results": bench.rows}, indent=1))


def _infer(model, clip, out_len, dtype):
    with torch.no_grad(), autocast(clip.device.type, dtype):
        return model(clip, out_len=out_len)


def _graphed(bench, task, n, mode, model, out_len, dtype):
    """A captured rollout (on CPU: the eager fallback), or None with the failure recorded."""
    if bench.out_of_time():
        bench.note(task, n, mode, skipped="time budget spent")
        return None
    try:
        return GraphedRollout(model, n, out_len, dtype)
    except Exception as e:
        bench.note(task, n, mode, error=f"capture failed: {type(e).__name__}: {str(e)[:300]}")
        return None


if __name__ == "__main__":
    main()
