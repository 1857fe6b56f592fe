"""FLOPs of the paper architectures per training sample and per predicted sequence, and what the
paper's 300k-iteration runs cost on GPUs at an assumed utilisation.

    python benchmarks/flops.py                                    # all paper presets
    python benchmarks/flops.py --gpu-tflops 312 --mfu 0.3 --usd-per-gpu-hour 4.1

FLOPs are counted by `torch.utils.flop_counter` on the meta device (no real compute, a second):
one training sample = Algorithm 1's phase 1 (long clip) + phase 2 (short clip), each forward
and backward; inference = one short_len -> out_len rollout. The GPU figures are arithmetic on
those counts: sustained TFLOP/s = peak x MFU, an assumption to replace with a measurement
(`samples_per_s` in metrics.json of a GPU run) once you have one.
"""
import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lmc  # noqa: E402


def count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def per_sample(cfg: lmc.LMCConfig) -> tuple[int, int]:
    """(training FLOPs for one clip pair, inference FLOPs for one short_len -> out_len rollout)."""
    with torch.device("meta"):
        model = lmc.LMCModel(cfg)
        window = torch.rand(1, cfg.window_len, cfg.channels, cfg.img_size, cfg.img_size)
    short, target = window[:, :cfg.short_len], window[:, cfg.short_len:]
    long = window[:, :cfg.long_len]

    def train_sample():
        for phase_long in (long, None):            # phase 1 (E_LMC, M) then phase 2 (E_MM)
            lmc.prediction_loss(model(short, long=phase_long, out_len=cfg.out_len),
                                target).backward()

    def infer():
        with torch.no_grad():
            model(short, out_len=cfg.out_len)

    return count(train_sample), count(infer)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["paper-mmnist", "paper-kth", "paper-h36m"])
    ap.add_argument("--iterations", type=int, default=300_000, help="the paper's run length")
    ap.add_argument("--gpu-tflops", type=float, default=312.0,
                    help="peak dense bf16 TFLOP/s of one GPU (A100: 312, H100 SXM: 989)")
    ap.add_argument("--mfu", type=float, default=0.3,
                    help="assumed fraction of peak sustained (convolutional RNNs at small batch: "
                         "0.2-0.4)")
    ap.add_argument("--usd-per-gpu-hour", type=float, default=4.1,
                    help="price of one GPU hour (A100 in an 8-GPU on-demand node ~4.1)")
    args = ap.parse_args()
    sustained = args.gpu_tflops * 1e12 * args.mfu
    print(f"assumed GPU: {args.gpu_tflops:g} TFLOP/s peak x MFU {args.mfu:g} = "
          f"{sustained / 1e12:.0f} TFLOP/s sustained, ${args.usd_per_gpu_hour:g}/GPU-hour")
    print(f"{'preset':<14}{'params':>12}{'train GFLOP/sample':>20}{'infer GFLOP/seq':>17}"
          f"{'samples/s/GPU':>15}{'GPU-h/run':>11}{'USD/run':>9}")
    for name in args.presets:
        cfg = lmc.preset(name)
        train_flops, infer_flops = per_sample(cfg)
        rate = sustained / train_flops
        gpu_hours = args.iterations * cfg.batch_size / rate / 3600
        print(f"{name:<14}{lmc.LMCModel(cfg).num_parameters():>12,}{train_flops / 1e9:>20.1f}"
              f"{infer_flops / 1e9:>17.1f}{rate:>15.0f}{gpu_hours:>11.0f}"
              f"{gpu_hours * args.usd_per_gpu_hour:>9,.0f}")
    print(f"a run = {args.iterations:,} iterations x the preset's batch size; GPU-hours divide "
          "across workers (DDP) at near-linear scaling, the cost does not")


if __name__ == "__main__":
    main()
