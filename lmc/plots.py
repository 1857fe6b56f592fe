"""Every picture the project draws: per-timestep curves and learning curves (baselines dashed on
the model's axes), prediction strips and GIFs, the sweep plot, and the memory-analysis heatmap
and slot usage. matplotlib (Agg) and PIL, imported when a picture is drawn.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .baselines import BASELINES
from .scoring import METRICS

# ---------------------------------------------------------------------------------------------
# metric curves

def _fmt(v) -> str:
    return "inf" if isinstance(v, float) and math.isinf(v) else f"{v:.6g}"

def write_curves(report: dict, output_dir) -> list[Path]:
    """Per protocol: ``curves_<name>.csv`` (timestep, one column per metric, then one per
    baseline and metric, e.g. ``copy_last_mse``) and a PNG with one panel per metric where the
    baselines are drawn dashed on the model's axes (matplotlib Agg). Returns the written paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rep in report["protocols"].items():
        names = [m for m in METRICS if m in rep["per_timestep"]]
        base = report.get("baselines", {}).get(name, {})
        columns = [(m, rep["per_timestep"][m]) for m in names]
        columns += [(f"{b}_{m}", base[b]["per_timestep"][m]) for b in base for m in names
                    if m in base[b]["per_timestep"]]
        csv = out / f"curves_{name}.csv"
        lines = [",".join(["timestep", *(c for c, _ in columns)])]
        for i, t in enumerate(rep["timesteps"]):
            lines.append(",".join([str(t), *(_fmt(v[i]) for _, v in columns)]))
        csv.write_text("\n".join(lines) + "\n")
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
        for ax, m in zip(axes[0], names):
            ax.plot(rep["timesteps"], rep["per_timestep"][m], marker="o", markersize=3,
                    label="model")
            for b, style in zip(base, ("--", ":", "-.")):
                if m in base[b]["per_timestep"]:
                    ax.plot(rep["timesteps"], base[b]["per_timestep"][m], style, color="grey",
                            label=BASELINES.get(b, b))
            if m in ("mse", "mae"):
                _log_if_spread(ax)
            ax.set_title(m.upper())
            ax.set_xlabel("future frame t")
            ax.grid(alpha=0.3)
        if base:
            axes[0][0].legend(fontsize=7)
        unavailable = rep.get("unavailable", {})
        note = "  (LPIPS unavailable)" if "lpips" in unavailable else ""
        fig.suptitle(f"{name}: {rep['num_samples']} test sequences{note}", fontsize=10)
        fig.tight_layout()
        png = out / f"curves_{name}.png"
        fig.savefig(png, dpi=80)
        plt.close(fig)
        written += [csv, png]
    return written

def _log_if_spread(ax, ratio: float = 20.0) -> None:
    """A log y-axis when the drawn curves span more than ``ratio`` (e.g. the all-zero frame's
    MSE far above the model's on KTH), so that the model's curve stays readable."""
    ys = [y for line in ax.get_lines() for y in line.get_ydata() if y is not None and y > 0]
    if ys and max(ys) > ratio * min(ys):
        ax.set_yscale("log")

def write_learning_curves(metrics: dict, output_dir) -> list[Path]:
    """A run's learning curves from its metrics.json: ``learning_curves.csv`` (one row per
    validation: iteration, the model's and each baseline's validation metrics) and
    ``learning_curves.png`` (training losses; validation MSE and PSNR with the baselines as
    dashed lines on the same axes). Returns the written paths ([] without validations)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val = metrics.get("validation_history") or []
    if not val:
        return []
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in val for k in row if k != "iteration"})
    csv = out / "learning_curves.csv"
    lines = [",".join(["iteration", *keys])]
    for row in val:
        lines.append(",".join([str(row["iteration"]),
                               *("" if row.get(k) is None else _fmt(row[k]) for k in keys)]))
    csv.write_text("\n".join(lines) + "\n")

    loss = metrics.get("loss_history") or []
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    if loss:
        for phase in ("loss_phase1", "loss_phase2"):
            axes[0].plot([r["iteration"] for r in loss], [r[phase] for r in loss],
                         label=phase.replace("loss_", ""), lw=1)
        axes[0].set_yscale("log")
        axes[0].legend(fontsize=7)
    axes[0].set_title("training loss (MSE + L1)")
    its = [r["iteration"] for r in val]
    for ax, m in zip(axes[1:], ("mse", "psnr")):
        ax.plot(its, [r.get(f"val_{m}") for r in val], marker="o", markersize=3, label="model")
        for b, style in zip(BASELINES, ("--", ":")):
            ys = [r.get(f"val_{b}_{m}") for r in val]
            if any(y is not None for y in ys):
                ax.plot(its, ys, style, color="grey", label=BASELINES[b])
        if m == "mse":
            _log_if_spread(ax)
        ax.set_title(f"validation {m.upper()} ({metrics.get('protocol', '')})")
        ax.legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png = out / "learning_curves.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return [csv, png]

# ---------------------------------------------------------------------------------------------
# prediction strips and GIFs

GIF_MS_PER_FRAME = 200

def to_uint8(clip: torch.Tensor) -> np.ndarray:
    """(T, C, H, W) float in [0, 1] (clamped) -> (T, H, W, C) uint8, rounded."""
    x = clip.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return x.transpose(0, 2, 3, 1)

def _image(frame: np.ndarray, scale: int):
    from PIL import Image

    img = Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)
    img = img.convert("RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img

def _scale_for(size: int) -> int:
    return max(1, -(-64 // size))        # cells at least 64 px wide

def strip_image(rows: list[tuple[str, np.ndarray | None]], *, scale: int | None = None):
    """A labelled grid: one row per (label, (T, H, W, C) uint8 frames or None), time in columns.
    A label may carry a second, grey line after a newline."""
    from PIL import Image, ImageDraw

    size = next(f.shape[1] for _, f in rows if f is not None)
    scale = scale or _scale_for(size)
    cell, gap, label_w = size * scale, 2, 92
    cols = max(len(f) for _, f in rows if f is not None)
    canvas = Image.new("RGB", (label_w + cols * (cell + gap), len(rows) * (cell + gap)),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, frames) in enumerate(rows):
        y = r * (cell + gap)
        label, _, note = label.partition("\n")
        draw.text((4, y + cell // 2 - 12), label, fill=(0, 0, 0))
        draw.text((4, y + cell // 2 + 2), note, fill=(110, 110, 110))
        if frames is None:
            draw.text((label_w + 4, y + cell // 2 - 6), "not available", fill=(150, 150, 150))
            continue
        for c, f in enumerate(frames):
            canvas.paste(_image(f, scale), (label_w + c * (cell + gap), y))
    return canvas

def gif_frames(inputs: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, *,
               scale: int | None = None, first_frame: int = 1) -> list:
    """Three panels side by side (input | ground truth | prediction) for every time step:
    during the input all show the observed frame; then the input panel holds its last frame,
    the others show the future (ground truth greyed out where the video has none).
    ``first_frame``: the input's number of the first frame, for the captions."""
    from PIL import Image, ImageDraw

    s, k = len(inputs), len(pred)
    size = inputs.shape[1]
    scale = scale or _scale_for(size)
    cell, gap, head = size * scale, 4, 14
    blank = np.full_like(inputs[0], 200)
    out = []
    for t in range(s + k):
        if t < s:
            panels, note = [inputs[t]] * 3, f"frame {first_frame + t}: observed"
        else:
            gt = truth[t - s] if truth is not None and t - s < len(truth) else blank
            panels, note = [inputs[-1], gt, pred[t - s]], f"frame {first_frame + t}: predicted"
        canvas = Image.new("RGB", (3 * cell + 2 * gap, cell + 2 * head), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        for i, (label, f) in enumerate(zip(("input", "ground truth", "prediction"), panels)):
            canvas.paste(_image(f, scale), (i * (cell + gap), head))
            draw.text((i * (cell + gap) + 2, 1), label, fill=(0, 0, 0))
        draw.text((2, head + cell + 1), note, fill=(200, 0, 0) if t >= s else (0, 0, 0))
        out.append(canvas)
    return out

def save_strip(inputs: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, output, *,
               name: str = "strip", first_frame: int = 1) -> tuple[Path, Path]:
    """``<name>.png`` (rows: input, ground truth, prediction) and ``<name>.gif`` (the three side
    by side over time) in ``output`` from (T, H, W, C) uint8 frames; ``truth`` may be None.
    ``first_frame``: the 1-based number of the first input frame, for the labels."""
    s, k, n = first_frame, first_frame + len(inputs) - 1, len(pred)
    future = f"frames {k + 1}-{k + n}"
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    png, gif_path = out / f"{name}.png", out / f"{name}.gif"
    strip_image([(f"input\nframes {s}-{k}", inputs), (f"ground truth\n{future}", truth),
                 (f"prediction\n{future}", pred)]).save(png)
    gif = gif_frames(inputs, truth, pred, first_frame=first_frame)
    gif[0].save(gif_path, save_all=True, append_images=gif[1:], duration=GIF_MS_PER_FRAME,
                loop=0)
    return png, gif_path

# ---------------------------------------------------------------------------------------------
# sweep and memory analysis

def plot_sweep(rows: list[dict], metric: str, path) -> None:
    """Metric (last reported) vs memory_slots, short_len, long_len and lr; trials stopped by
    ASHA drawn hollow."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("memory_slots", "memory slots"), ("short_len", "short_len"),
            ("long_len", "long_len"), ("lr", "learning rate")]
    fig, axes = plt.subplots(1, 4, figsize=(12, 2.9), sharey=True)
    for ax, (key, label) in zip(axes, keys):
        for stopped, style in ((False, dict(c="C0")), (True, dict(facecolors="none",
                                                                   edgecolors="C3"))):
            pts = [(r["lr"] if key == "lr" else r["combo"][key], r["metric"]) for r in rows
                   if r["stopped_early"] == stopped]
            if pts:
                ax.scatter(*zip(*pts), s=28, label="stopped by ASHA" if stopped else "finished",
                           **style)
        ax.set_xlabel(label)
        if key in ("memory_slots", "lr"):
            ax.set_xscale("log")
        if key != "lr":      # integer settings: tick exactly the values tried
            values = sorted({r["combo"][key] for r in rows})
            ax.set_xticks(values, [str(v) for v in values])
            ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{len(rows)} trials: {metric} at their last report", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)

def plot_similarity(sim: torch.Tensor, labels: Sequence[str], path, title: str = "") -> None:
    """Heatmap of a class-grouped long-vs-short similarity matrix, class blocks outlined."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    im = ax.imshow(sim.numpy(), cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    bounds, centers, names, start = [], [], [], 0
    for i in range(1, n + 1):
        if i == n or labels[i] != labels[start]:
            bounds.append(i)
            centers.append((start + i - 1) / 2)
            names.append(str(labels[start]))
            start = i
    for b in bounds[:-1]:
        ax.axhline(b - 0.5, color="white", lw=0.8)
        ax.axvline(b - 0.5, color="white", lw=0.8)
    ax.set_xticks(centers, names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(centers, names, fontsize=8)
    ax.set_xlabel("short clips (E_MM, phase 2)")
    ax.set_ylabel("long clips (E_LMC, phase 1)")
    ax.set_title(title or "memory addressing similarity", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)

def plot_slot_usage(usage: dict[str, dict], path) -> None:
    """Bars: per slot, how many queries address it most, for each phase."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(usage), 1, figsize=(7, 1.9 * len(usage)), squeeze=False)
    for ax, (name, u) in zip(axes[:, 0], usage.items()):
        ax.bar(range(u["num_slots"]), u["argmax_counts"], width=0.9)
        ax.set_title(f"{name}: {u['slots_argmax']}/{u['num_slots']} slots ever the argmax, "
                     f"{u['slots_above_threshold']} above weight {u['threshold']:.3g}", fontsize=9)
        ax.set_ylabel("queries")
    axes[-1, 0].set_xlabel("memory slot")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
