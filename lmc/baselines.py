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

import math

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


# The verdict (docs/design.md §6): judged per metric, for every metric both sides have, per baseline.
LOWER_IS_BETTER = ("mse", "mae", "lpips")
HIGHER_IS_BETTER = ("psnr", "ssim")
JUDGED_METRICS = ("mse", "mae", "psnr", "ssim", "lpips")   # the order the verdict lists them in
SHORT_NAMES = {"copy_last": "copy-last", "zeros": "all-zero"}
# Values this close (relative to the larger magnitude) are a tie, neither a win nor a loss: a
# model stuck on the blank frame scores MSE 18.221 against the all-zero frame's 18.228 (0.04 %)
# and has not beaten it. 0.1 % is below what the reports print (4 significant digits) and far
# below any difference a reader would call one (0.03 dB of PSNR at 30 dB).
TIE_REL_TOL = 1e-3


def compare(metric: str, model: float, baseline: float) -> str:
    """"beats", "loses" or "ties": the model's value of ``metric`` against a baseline's (lower
    is better for MSE, MAE and LPIPS, higher for PSNR and SSIM; within ``TIE_REL_TOL`` a tie;
    a NaN model value loses)."""
    if metric not in LOWER_IS_BETTER + HIGHER_IS_BETTER:
        raise ValueError(f"no direction known for metric {metric!r}; judged: "
                         f"{', '.join(JUDGED_METRICS)}")
    model, baseline = float(model), float(baseline)
    if math.isclose(model, baseline, rel_tol=TIE_REL_TOL):
        return "ties"
    better = model < baseline if metric in LOWER_IS_BETTER else model > baseline
    return "beats" if better else "loses"


def verdict(model_mean: dict, baseline_means: dict[str, dict]) -> dict[str, dict]:
    """The model against each baseline, metric by metric: every metric of ``JUDGED_METRICS``
    that the model's means and the baseline's both hold (LPIPS only when computed).

    Returns {baseline: {"beats": [metric], "loses": [metric], "ties": [metric], "line": str}},
    metrics named as in the means ("mse", ...), e.g. for copy_last
    {"beats": ["mse"], "loses": ["mae", "psnr", "ssim"], "ties": [],
     "line": "vs copy-last: beats on MSE; loses on MAE, PSNR, SSIM"}.
    The one judgement every report shows (scoring, training's summary, evaluate, the ablation
    and tune tables, the demo's hint)."""
    out = {}
    for name, mean in baseline_means.items():
        judged: dict[str, list] = {"beats": [], "loses": [], "ties": []}
        for m in JUDGED_METRICS:
            if model_mean.get(m) is not None and mean.get(m) is not None:
                judged[compare(m, model_mean[m], mean[m])].append(m)
        parts = [f"{word} on {', '.join(m.upper() for m in judged[word])}"
                 for word in ("beats", "loses", "ties") if judged[word]]
        line = f"vs {SHORT_NAMES.get(name, name)}: " + ("; ".join(parts) or "no metric to compare")
        out[name] = {**judged, "line": line}
    return out


def verdict_line(judged: dict[str, dict], sep: str = " | ") -> str:
    """The per-baseline lines of a ``verdict`` as one line."""
    return sep.join(v["line"] for v in judged.values())


def beats_every_baseline(judged: dict[str, dict]) -> bool:
    """True when the model beats each baseline on every metric judged (no loss, no tie)."""
    return bool(judged) and all(v["beats"] and not v["loses"] and not v["ties"]
                                for v in judged.values())
