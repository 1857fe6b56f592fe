"""Trivial predictors that every score is reported beside (docs/design.md §6).

A video predictor has learned something only when it beats these under the same protocol and
the same metric code:
  - ``copy_last``: the last input frame, repeated for every future frame (strong when little
    moves: most of a KTH frame is static background);
  - ``zeros``: the all-zero frame (strong on Moving-MNIST, whose frames are mostly black; a
    model stuck on a blank prediction scores exactly this).

Plain PyTorch, no Ray.
"""
from __future__ import annotations

import torch

BASELINES = {
    "copy_last": "copy last input frame",
    "zeros": "all-zero frame",
}


def baseline_prediction(name: str, short: torch.Tensor, out_len: int) -> torch.Tensor:
    """The baseline's prediction (N, out_len, C, H, W) from the short clip (N, T, C, H, W)."""
    if name == "copy_last":
        return short[:, -1:].expand(-1, out_len, -1, -1, -1)
    if name == "zeros":
        return short.new_zeros(short.shape[0], out_len, *short.shape[2:])
    raise ValueError(f"unknown baseline {name!r}; allowed: {', '.join(BASELINES)}")


def verdict(model_mean: dict, baseline_means: dict[str, dict]) -> str:
    """One line: does the model beat each baseline? Judged on MSE (lower is better), with PSNR
    and SSIM beside it, e.g. "model MSE 61.2 beats copy last input frame (MSE 95.3) and beats
    all-zero frame (MSE 171.0)"."""
    parts = []
    for name, mean in baseline_means.items():
        beats = model_mean["mse"] < mean["mse"]
        extra = "".join(f", {k.upper()} {mean[k]:.4g}" for k in ("psnr", "ssim") if k in mean)
        parts.append(f"{'BEATS' if beats else 'does NOT beat'} {BASELINES.get(name, name)} "
                     f"(MSE {mean['mse']:.4g}{extra})")
    own = "".join(f", {k.upper()} {model_mean[k]:.4g}" for k in ("psnr", "ssim") if k in model_mean)
    return f"model (MSE {model_mean['mse']:.4g}{own}) " + " and ".join(parts)

