"""Time one memory-alignment iteration and one 10->30 inference of the LMC-Memory model on CPU,
against a straightforward per-frame implementation of the same math (benchmarks/naive_model.py).

    python benchmarks/bench_model.py                     # paper-mmnist architecture, batch 2
    python benchmarks/bench_model.py --preset tiny --batch 8 --repeats 5

Both models hold the same weights; their outputs are compared before anything is timed.
Timings alternate between the implementations so machine noise hits both alike; the ratio
of medians is what to read. Also times the optimised model with channels_last, bf16 autocast
and per-timestep regional compilation (``--compile``: inductor needs a C++ compiler and
compiles for a minute or more on a CPU; the first, compiling call is not timed).

Every variant's rate is printed in GFLOP/s (FLOPs counted by benchmarks/flops.py), beside a
ceiling: the whole call at the rate this CPU reaches on the ConvLSTM gate convolution alone
(its largest and most efficient kernel), fp32 and bf16. Both implementations do the same
FLOPs: a speed-up beyond ceiling / per-frame time would need kernels faster than the CPU's
best one, or fewer FLOPs.
"""
import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import lmc  # noqa: E402
from lmc.accel import compile_problem  # noqa: E402
from flops import per_sample  # noqa: E402
from naive_model import NaiveLMC  # noqa: E402

BF16 = torch.bfloat16


def autocast(device_type: str, dtype=None):
    """Autocast to ``dtype``, or nothing when it is None (fp32)."""
    return torch.autocast(device_type, dtype=dtype or BF16, enabled=dtype is not None)


def naive_train_step(model, opt, short, long, target):
    for phase_long in (long, None):           # phase 1 then phase 2, as Algorithm 1
        opt.zero_grad(set_to_none=True)
        loss = lmc.prediction_loss(model(short, long=phase_long, out_len=target.shape[1]), target)
        loss.backward()
        opt.step()


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper-mmnist")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time compile_regions()")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = lmc.preset(args.preset, warmup_iterations=0)
    s, k = cfg.short_len, cfg.out_len
    window = torch.rand(args.batch, s + k, cfg.channels, cfg.img_size, cfg.img_size)
    short, long, target = window[:, :s], window[:, :cfg.long_len], window[:, s:]
    fast = lmc.LMCModel(cfg)
    naive = NaiveLMC(fast)
    print(f"{args.preset}: {fast.num_parameters():,} parameters, batch {args.batch}, "
          f"{s}->{k}, {args.threads} threads, torch {torch.__version__}")

    train_flops, infer_flops = (args.batch * f for f in per_sample(cfg))
    peak = {dtype: gate_conv_rate(cfg, args.batch, dtype) for dtype in (None, BF16)}
    print(f"ConvLSTM gate conv alone (channels_last): {peak[None] / 1e9:.0f} GFLOP/s fp32, "
          f"{peak[BF16] / 1e9:.0f} GFLOP/s bf16")

    with torch.no_grad():
        a, b = fast(short, out_len=k), naive(short, out_len=k)
    err = float((a - b).norm() / b.norm())
    print(f"same function: relative difference {err:.2e}")
    assert err < 1e-5, "the implementations disagree; timings would be meaningless"

    def copy_of(model, channels_last=False, compiled=False):
        m = copy.deepcopy(model)
        if channels_last:
            m.to_channels_last()
        return m.compile_regions() if compiled else m

    def infer(model, dtype=None):
        def run():
            with torch.no_grad(), autocast("cpu", dtype):
                model(short, out_len=k)
        return run

    why_not = "not asked (--compile)" if not args.compile else compile_problem("cpu")
    variants = {
        "naive per-frame": infer(naive),
        "lmc (batched E_sp, fused gates)": infer(fast),
        "lmc + channels_last": infer(copy_of(fast, channels_last=True)),
        "lmc + bf16 autocast": infer(fast, BF16),
        "lmc + bf16 + channels_last": infer(copy_of(fast, channels_last=True), BF16),
    }
    if not why_not:
        variants["lmc + compile_regions"] = infer(copy_of(fast, compiled=True))
        variants["lmc + bf16 + compile_regions"] = infer(copy_of(fast, compiled=True), BF16)
    report(f"inference {s}->{k} (batch {args.batch})", variants, args.repeats, infer_flops, peak)

    if args.skip_train:
        return
    opt = torch.optim.Adam(naive.parameters(), lr=cfg.lr)
    train = {
        "naive per-frame": lambda: naive_train_step(naive, opt, short, long, target),
        "lmc MemoryAlignment.step": alignment_step(copy_of(fast), cfg, window),
        "lmc + channels_last": alignment_step(copy_of(fast, channels_last=True), cfg, window),
        "lmc + bf16 autocast": alignment_step(copy_of(fast), cfg, window, BF16),
        "lmc + bf16 + channels_last": alignment_step(copy_of(fast, channels_last=True), cfg,
                                                     window, BF16),
    }
    if not why_not:
        train["lmc + bf16 + compile_regions"] = alignment_step(copy_of(fast, compiled=True), cfg,
                                                               window, BF16)
    report(f"training iteration (phase 1 + phase 2, batch {args.batch})", train, args.repeats,
           train_flops, peak)
    if why_not:
        print(f"compile_regions not timed: {why_not}")


def alignment_step(model, cfg, window, autocast_dtype=None):
    align = lmc.MemoryAlignment(model, lr=cfg.lr, warmup_iterations=0, autocast_dtype=autocast_dtype)
    return lambda: align.step(window, long_start=0)


def gate_conv_rate(cfg, batch: int, dtype=None, repeats: int = 20) -> float:
    """FLOP/s of the ConvLSTM gate convolution (cat(x, h) -> 4 gates, 3x3) at this batch, in
    channels_last, median over fresh tensors (oneDNN's first calls and some allocations run
    slow)."""
    hid, size = cfg.hidden, cfg.img_size // 4
    flops = 2 * batch * size * size * 4 * hid * 2 * hid * 9
    times = []
    for _ in range(repeats):
        x = torch.randn(batch, 2 * hid, size, size).contiguous(memory_format=torch.channels_last)
        w = torch.randn(4 * hid, 2 * hid, 3, 3).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), autocast("cpu", dtype):
            F.conv2d(x, w, padding=1)
            times.append(timed(lambda: F.conv2d(x, w, padding=1)))
    return flops / statistics.median(times)


def report(title: str, variants: dict, repeats: int, flops: float, peak: dict) -> None:
    """Warm every variant up (Adam state, compilation), then time them in turns; print each
    median, its rate, its speed-up over the first (the per-frame implementation), the best,
    and the ceilings: ``flops`` at the gate conv's fp32 and bf16 rates (``peak``)."""
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    base = medians["naive per-frame"]
    print(f"\n{title}, {flops / 1e9:.0f} GFLOP, median of {repeats}:")
    for name, med in medians.items():
        print(f"  {name:34s} {med:8.3f} s  {flops / med / 1e9:5.0f} GFLOP/s   "
              f"speed-up x{base / med:.2f}")
    best = min((n for n in medians if n != "naive per-frame"), key=medians.get)
    print(f"  best: {best} x{base / medians[best]:.2f}")
    for dtype, name in ((None, "fp32"), (BF16, "bf16")):
        t = flops / peak[dtype]
        print(f"  ceiling {name}: every FLOP at the gate conv's rate, {t:.3f} s = x{base / t:.2f}")


if __name__ == "__main__":
    main()
