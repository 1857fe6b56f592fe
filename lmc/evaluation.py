"""Evaluation on test windows (phase 2 only) and the pictures a run leaves behind.

    protocol = eval_protocol(cfg.short_len, test_out_len, "10-40")
    summary, sample = evaluate(model, "data/kth-shards", protocol, batch_size=8)
    plot_metric_curves(summary, "run/metrics_per_timestep.png")
    save_prediction_strip(sample["target"], sample["pred"], "run/prediction.png")

No Ray: test windows are read with plain pyarrow (`pipeline.iter_test_windows`), so the same
code serves the Ray Train driver, `jobs/evaluate.py` and a notebook.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .metrics import PROTOCOLS, MetricAccumulator, Protocol, frame_metrics, get_protocol


def eval_protocol(short_len: int, test_out_len: int, name: str | None = None) -> Protocol:
    """The protocol to score: a named one (checked against the model and the test windows) or,
    with ``name=None``, the named protocol that fits (short_len, test_out_len), else all
    ``test_out_len`` future frames."""
    if name is None:
        fits = [p for p in PROTOCOLS.values()
                if p.short_len == short_len and p.out_len == test_out_len and p.frames[0] == 0]
        if fits:
            return fits[0]
        return Protocol(f"{short_len}-{test_out_len}", short_len, test_out_len,
                        tuple(range(test_out_len)))
    p = get_protocol(name)
    if p.short_len != short_len:
        raise ValueError(f"protocol {p.name} feeds {p.short_len} frames but the model's short_len "
                         f"is {short_len}")
    if p.out_len > test_out_len:
        raise ValueError(f"protocol {p.name} scores {p.out_len} future frames but the test "
                         f"windows hold only {test_out_len}; prepare the data with a longer "
                         "test_out_len")
    return p


@torch.no_grad()
def evaluate(model, data: str, protocol: Protocol, *, batch_size: int = 8,
             max_windows: int | None = None, lpips=None, device=None,
             keep_sample: bool = True) -> tuple[dict, dict | None]:
    """Phase-2 predictions on the test windows of ``data``, scored under ``protocol``.

    Returns (``MetricAccumulator.summary()``, sample) where sample holds the first window's
    ``short``/``target``/``pred`` (T, C, H, W) CPU tensors (None if ``keep_sample`` is False).
    ``lpips``: a ``load_lpips`` result; falsy ones are recorded as unavailable with the reason.
    """
    from pipeline import iter_test_windows  # pyarrow only

    core = model.module if hasattr(model, "module") else model
    device = device or next(core.parameters()).device
    was_training = core.training
    core.eval()
    acc = MetricAccumulator(protocol)
    if lpips is not None and not lpips:
        acc.mark_unavailable("lpips", lpips.reason)
    sample, seen = None, 0
    try:
        for batch in iter_test_windows(data, batch_size=batch_size, short_len=protocol.short_len,
                                       out_len=protocol.out_len):
            window = batch["window"]
            if max_windows is not None:
                window = window[:max_windows - seen]
            window = window.to(device)
            short, target = window[:, :protocol.short_len], window[:, protocol.short_len:]
            pred = core(short, out_len=protocol.out_len).float()    # (N, K, C, H, W)
            per_frame = frame_metrics(pred, target)
            if lpips:
                per_frame["lpips"] = lpips(pred, target)
            acc.update(per_frame)
            if sample is None and keep_sample:
                sample = {"short": short[0].cpu(), "target": target[0].cpu(),
                          "pred": pred[0].clamp(0, 1).cpu()}
            seen += window.shape[0]
            if max_windows is not None and seen >= max_windows:
                break
    finally:
        core.train(was_training)
    return acc.summary(), sample


def plot_metric_curves(summary: dict, path: str, title: str = "") -> str:
    """One panel per metric: its mean over test windows at each future time step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in ("psnr", "ssim", "mse", "mae", "lpips") if m in summary["per_timestep"]]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(summary["timesteps"], summary["per_timestep"][name], marker="o", ms=3)
        ax.set_xlabel("future frame t")
        ax.set_title(f"{name.upper()} (mean {summary['mean'][name]:.4g})", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(title or f"protocol {summary['protocol']}, {summary['num_samples']} windows",
                 fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, C, H, W) float in [0, 1] -> (T, H, W, 3) uint8."""
    x = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def save_prediction_strip(target: torch.Tensor, pred: torch.Tensor, path: str,
                          max_frames: int = 20, gif: bool = True) -> list[str]:
    """A PNG strip (top row: ground truth, bottom: prediction, one column per future frame) and,
    with ``gif``, an animated GIF of the two side by side. Returns the written paths."""
    from PIL import Image

    gt, pr = _to_uint8(target[:max_frames]), _to_uint8(pred[:max_frames])  # (T, H, W, 3)
    t, h, w, _ = gt.shape
    gap = 2
    strip = np.full((2 * h + gap, t * (w + gap) - gap, 3), 255, np.uint8)
    for i in range(t):
        x0 = i * (w + gap)
        strip[:h, x0:x0 + w] = gt[i]
        strip[h + gap:, x0:x0 + w] = pr[i]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    scale = max(1, 96 // h)
    img = Image.fromarray(strip)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)
    written = [path]
    if gif:
        frames = [Image.fromarray(np.concatenate([gt[i], np.full((h, gap, 3), 255, np.uint8),
                                                  pr[i]], axis=1)) for i in range(t)]
        frames = [f.resize((f.width * scale, f.height * scale), Image.NEAREST) for f in frames]
        gif_path = os.path.splitext(path)[0] + ".gif"
        frames[0].save(gif_path, save_all=True, append_images=frames[1:], duration=120, loop=0)
        written.append(gif_path)
    return written
