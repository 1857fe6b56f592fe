"""Evaluate a checkpoint on test shards: the paper's metrics, per-timestep curves, inference time.

    from lmc.evaluate import evaluate
    report = evaluate("runs/kth/checkpoint", "shards/kth", protocols=["10-20", "10-40"],
                      output="eval/kth")

What it does, in order (DESIGN §6):
  1. loads the model (a checkpoint folder of this project, or a reference ``.pt`` file with a
     preset) and the test shards' manifest, and checks they match: channels, image size, and
     windows long enough for every protocol. A mismatch is a ``DataMismatchError`` naming both
     sides, raised before any frame is read;
  2. predicts every test window once with the longest horizon asked for (the rollout is
     autoregressive without teacher forcing and F_mem depends on the short clip only, so the
     first K frames of a 40-frame prediction *are* the K-frame prediction) and scores each
     protocol's frames with ``lmc.metrics`` (MSE, MAE, PSNR, SSIM and LPIPS when its weights are
     on this machine, else "unavailable: <reason>");
  3. times inference the way the paper's Table 4 does: one sequence (batch 1), after warm-up
     runs, for each horizon (10->30, 10->40, ...), median and mean seconds per sequence;
  4. scores the baselines (copy-last-frame, all-zero frame; ``lmc.baselines``) on the same
     windows with the same metric code, and says in one line per protocol whether the model
     beats each;
  5. writes ``summary.json``, and per protocol ``curves_<protocol>.csv`` and ``.png`` (the
     baselines drawn on the model's axes).

Reading is plain pyarrow through ``pipeline.iter_test_windows`` (deterministic order, no Ray);
nothing here imports Ray, so it runs in a notebook, in a job, or on a GPU box alike.
"""
from __future__ import annotations

import json
import math
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch

from .baselines import BASELINES, baseline_prediction, verdict
from .checkpoint import load_config, load_model
from .config import LMCConfig, preset as make_preset
from .metrics import (PROTOCOLS, MetricAccumulator, Protocol, frame_metrics, get_protocol,
                      load_lpips)
from .reference import CheckpointError

METRICS = ("mse", "mae", "psnr", "ssim", "lpips")
_CUSTOM_PROTOCOL = re.compile(r"^(\d+)-(\d+)(?:-last(\d+))?$")


class DataMismatchError(ValueError):
    """The checkpoint and the data (or the protocol) do not fit together; says how."""


# ---------------------------------------------------------------------------------------------
# checkpoints, data and protocols

def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> cuda when there is one, else cpu."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def checkpoint_config(checkpoint, preset: str | LMCConfig | None = None) -> LMCConfig:
    """The config a checkpoint's weights belong to, without loading the weights.

    A folder of this project carries its config (``preset`` is then ignored); a single ``.pt``
    file (the reference's format) needs ``preset`` (a name such as "paper-kth" or an LMCConfig).
    """
    path = Path(checkpoint)
    if path.is_dir():
        return load_config(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if preset is None:
        raise CheckpointError(f"{path} is a single weights file (the reference's format); give "
                              "the config it was trained with, e.g. --preset paper-kth")
    return preset if isinstance(preset, LMCConfig) else make_preset(preset)


def load_for_inference(checkpoint, preset: str | LMCConfig | None = None,
                       device=None) -> tuple[torch.nn.Module, LMCConfig]:
    """(model in eval mode on ``device``, its config) from a checkpoint folder or reference file."""
    cfg = checkpoint_config(checkpoint, preset)
    path = Path(checkpoint)
    model = load_model(path, None if path.is_dir() else cfg)
    return model.to(resolve_device(device)).eval(), cfg


def data_info(data: str) -> dict:
    """What the test shards hold, from their manifest: channels, img_size, test window length,
    dataset name and test row count. Reads one small JSON file."""
    import pipeline  # the shards' format lives there (pipeline imports no model code)

    manifest = pipeline.read_manifest(data)
    c = manifest["config"]
    test_out = c.get("test_out_len") or c["out_len"]
    return {"path": str(data), "dataset": manifest.get("source", {}).get("dataset"),
            "channels": int(c["channels"]), "img_size": int(c["img_size"]),
            "short_len": int(c["short_len"]), "window_len": int(c["short_len"]) + int(test_out),
            "test_rows": int(manifest.get("rows", {}).get("test", 0))}


def resolve_protocol(name: str | Protocol) -> Protocol:
    """A named protocol ("10-40", "10->40", "10-40-last10") or any "S-K" / "S-K-lastN"."""
    if isinstance(name, Protocol):
        return name
    try:
        return get_protocol(name)
    except ValueError:
        m = _CUSTOM_PROTOCOL.match(str(name).replace("->", "-").strip())
        if not m:
            raise ValueError(f"unknown protocol {name!r}: use one of {sorted(PROTOCOLS)} or "
                             "'S-K' (S frames in, K out) or 'S-K-lastN' (score the last N)") from None
        s, k, last = int(m.group(1)), int(m.group(2)), m.group(3)
        if k < 1 or (last is not None and not 1 <= int(last) <= k):
            raise ValueError(f"protocol {name!r}: need K >= 1 and 1 <= N <= K") from None
        first = k - int(last) if last is not None else 0
        return Protocol(f"{s}-{k}" + (f"-last{last}" if last else ""), s, k,
                        tuple(range(first, k)))


def last_n_protocol(short_len: int, out_len: int, n: int = 10) -> Protocol:
    """Table 4's "last 10 of the future frames" for any horizon ("10-40-last10" for 10->40);
    the whole horizon when it has no more than ``n`` frames."""
    if out_len == 40 and short_len == 10 and n == 10:
        return PROTOCOLS["10-40-last10"]
    return resolve_protocol(f"{short_len}-{out_len}-last{min(n, out_len)}")


def protocol_for(short_len: int, test_out_len: int, name: str | None = None) -> Protocol:
    """The one protocol a training run scores: ``name`` (checked against the model's short_len
    and the test windows' ``test_out_len``) or, with ``name=None``, the named protocol that
    predicts exactly ``test_out_len`` frames from ``short_len``, else "S-K" over all of them."""
    if name is None:
        fits = [p for p in PROTOCOLS.values()
                if p.short_len == short_len and p.out_len == test_out_len and p.frames[0] == 0]
        return fits[0] if fits else resolve_protocol(f"{short_len}-{test_out_len}")
    p = resolve_protocol(name)
    if p.short_len != short_len:
        raise ValueError(f"protocol {p.name} feeds {p.short_len} frames but the model's short_len "
                         f"is {short_len}")
    if p.out_len > test_out_len:
        raise ValueError(f"protocol {p.name} scores {p.out_len} future frames but the test "
                         f"windows hold only {test_out_len}; prepare the data with "
                         f"--test-out-len {p.out_len} (or more)")
    return p


def default_protocols(cfg: LMCConfig, info: dict) -> list[Protocol]:
    """The paper's protocols for the dataset that the data's windows can hold (KTH: 10-20,
    10-40, 10-40-last10; Moving-MNIST: 10-10, 10-30), else the data's own S->K."""
    fits = [p for p in PROTOCOLS.values()
            if info.get("dataset") in p.datasets and p.short_len == cfg.short_len
            and p.short_len + p.out_len <= info["window_len"]]
    if fits:
        return fits
    return [resolve_protocol(f"{cfg.short_len}-{info['window_len'] - cfg.short_len}")]


def check_compatible(cfg: LMCConfig, info: dict, protocols: Sequence[Protocol]) -> None:
    """Raise ``DataMismatchError`` unless the model, the data and every protocol fit together."""
    where = info.get("path", "the data")
    if cfg.channels != info["channels"]:
        raise DataMismatchError(
            f"the checkpoint expects {cfg.channels}-channel frames but {where} holds "
            f"{info['channels']}-channel frames (config field 'channels'); use shards prepared "
            f"with --channels {cfg.channels}, or the checkpoint trained on this data")
    if cfg.img_size != info["img_size"]:
        raise DataMismatchError(
            f"the checkpoint expects {cfg.img_size}x{cfg.img_size} frames but {where} holds "
            f"{info['img_size']}x{info['img_size']} frames (config field 'img_size'); use shards "
            f"prepared with --img-size {cfg.img_size}")
    for p in protocols:
        if p.short_len != cfg.short_len:
            raise DataMismatchError(
                f"protocol {p.name} feeds {p.short_len} input frames but the checkpoint was "
                f"trained on short clips of {cfg.short_len} (config field 'short_len')")
        need = p.short_len + p.out_len
        if need > info["window_len"]:
            raise DataMismatchError(
                f"protocol {p.name} needs test windows of {need} frames ({p.short_len} in + "
                f"{p.out_len} out) but {where} has windows of {info['window_len']}; prepare the "
                f"test split with --test-out-len {p.out_len} (or more), or choose a protocol "
                f"of at most {info['window_len'] - p.short_len} future frames")


# ---------------------------------------------------------------------------------------------
# scoring

def test_windows(data: str, *, short_len: int, out_len: int, batch_size: int = 8,
                 max_windows: int | None = None) -> Iterator[torch.Tensor]:
    """Batches (N, short_len + out_len, C, H, W) float in [0, 1] of the test split of ``data``,
    in order, at most ``max_windows`` windows in all (None: every one)."""
    import pipeline  # the shards' reader; plain pyarrow, no Ray

    seen = 0
    for batch in pipeline.iter_test_windows(data, batch_size=batch_size, short_len=short_len,
                                            out_len=out_len):
        w = torch.as_tensor(batch["window"])
        if max_windows is not None:
            w = w[:max_windows - seen]
        seen += len(w)
        yield w
        if max_windows is not None and seen >= max_windows:
            return


@torch.no_grad()
def score_windows(model: torch.nn.Module, windows: Iterable[torch.Tensor],
                  protocols: Sequence[Protocol], lpips_metric=None, device=None,
                  baselines: Sequence[str] = tuple(BASELINES)) -> dict[str, dict[str, MetricAccumulator]]:
    """Score ``model`` (phase 2: short clip in) and each baseline on the same batches of
    windows (N, T, C, H, W) in [0, 1], with the same metric code.

    Returns {"model": {protocol name: accumulator}, "<baseline>": {...}, ...}. One prediction per
    window with the longest horizon among ``protocols`` (all must share one short_len); each
    protocol's accumulator gets the metrics of its first ``out_len`` frames.
    ``lpips_metric``: an ``LPIPSMetric``, or a falsy ``LPIPSUnavailable`` (recorded as
    unavailable with its reason), or None (not computed).
    """
    short_lens = {p.short_len for p in protocols}
    if len(short_lens) != 1:
        raise ValueError(f"protocols must share one short_len, got {sorted(short_lens)}")
    s = short_lens.pop()
    horizon = max(p.out_len for p in protocols)
    device = next(model.parameters()).device if device is None else torch.device(device)
    scores = {who: {p.name: MetricAccumulator(p) for p in protocols}
              for who in ("model", *baselines)}
    if lpips_metric is not None and not lpips_metric:
        for accs in scores.values():
            for acc in accs.values():
                acc.mark_unavailable("lpips", lpips_metric.reason)
    was_training = model.training
    model.eval()
    try:
        for window in windows:
            window = torch.as_tensor(window).to(device, torch.float32)    # (N, T, C, H, W)
            short, target = window[:, :s], window[:, s:s + horizon]
            for who, accs in scores.items():
                pred = (model(short, out_len=horizon) if who == "model"
                        else baseline_prediction(who, short, horizon))    # (N, horizon, C, H, W)
                per_frame = frame_metrics(pred, target)                   # (N, horizon) each
                if lpips_metric:
                    per_frame["lpips"] = lpips_metric(pred, target)
                for p in protocols:
                    accs[p.name].update({k: v[:, :p.out_len] for k, v in per_frame.items()})
    finally:
        model.train(was_training)    # the training loop calls this between steps
    return scores


def summarize_scores(scores: dict[str, dict[str, MetricAccumulator]]) -> dict:
    """{"protocols": {name: model summary}, "baselines": {name: {baseline: summary}},
    "verdict": {name: one line saying whether the model beats each baseline}}."""
    model = {name: acc.summary() for name, acc in scores["model"].items()}
    base = {name: {who: accs[name].summary() for who, accs in scores.items() if who != "model"}
            for name in model}
    return {"protocols": model, "baselines": base,
            "verdict": {name: verdict(model[name]["mean"], {b: v["mean"] for b, v in base[name].items()})
                        for name in model if base[name]}}


def validation_metrics(model: dict, baselines: dict[str, dict]) -> dict[str, float]:
    """The flat names a run reports and logs: ``val_<metric>`` for the model and
    ``val_<baseline>_<metric>`` for each baseline (``val_mse``, ``val_copy_last_mse``, ...),
    from summaries as ``summarize_scores`` makes them."""
    out = {f"val_{k}": v for k, v in model["mean"].items()}
    out.update({f"val_{b}_{k}": v for b, rep in baselines.items() for k, v in rep["mean"].items()})
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_inference(model: torch.nn.Module, short: torch.Tensor, out_len: int, *,
                   warmup: int = 3, repeats: int = 10) -> dict:
    """Seconds per sequence for ``model(short[:1], out_len)``: batch 1, after ``warmup`` runs
    (the paper's Table 4 cost column). Returns median, mean, std, min and the settings."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup}, {repeats}")
    model.eval()
    short = short[:1]
    device = short.device
    for _ in range(warmup):
        model(short, out_len=out_len)
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(short, out_len=out_len)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"protocol": f"{short.shape[1]}->{out_len}", "batch_size": 1,
            "median_s": statistics.median(times), "mean_s": statistics.fmean(times),
            "std_s": statistics.pstdev(times), "min_s": min(times), "warmup": warmup,
            "repeats": repeats, "device": str(device), "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------
# outputs

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


def format_report(report: dict) -> str:
    """A plain-text table: one row per protocol (and per baseline under it), the paper's
    metrics, the verdict line, then the timings."""
    cols = ("mse", "mae", "psnr", "ssim", "lpips")
    lines = [f"{'protocol':<14}{'samples':>8}" + "".join(f"{c.upper():>11}" for c in cols)]

    def row(label, rep):
        cells = []
        for c in cols:
            v = rep["mean"].get(c)
            cells.append(f"{'unavail.' if v is None else _fmt(round(v, 4)):>11}")
        return f"{label:<14}{rep['num_samples']:>8}" + "".join(cells)

    for name, rep in report["protocols"].items():
        lines.append(row(name, rep))
        for b, brep in report.get("baselines", {}).get(name, {}).items():
            lines.append(row(f"  {b}", brep))
    for name, line in report.get("verdict", {}).items():
        lines.append(f"{name}: {line}")
    if report.get("lpips", "").startswith("unavailable"):
        lines.append(f"LPIPS {report['lpips']}")
    for t in report.get("inference_time", {}).values():
        lines.append(f"inference {t['protocol']}: {t['median_s'] * 1e3:.1f} ms/sequence "
                     f"(median of {t['repeats']}, batch 1, {t['device']}, {t['threads']} threads)")
    return "\n".join(lines)


def _unavailable(reason: str) -> str:
    """'unavailable: <reason>' (the reason without its own 'LPIPS unavailable:' lead-in)."""
    return "unavailable: " + re.sub(r"^LPIPS unavailable:\s*", "", reason)


# ---------------------------------------------------------------------------------------------
# the command

def evaluate(checkpoint, data, *, protocols: Sequence[str | Protocol] | None = None,
             output=None, preset: str | LMCConfig | None = None, batch_size: int = 8,
             device=None, lpips: bool = True, max_samples: int | None = None,
             timing: bool = True, timing_warmup: int = 3, timing_repeats: int = 10,
             log: Callable[[str], None] | None = print) -> dict:
    """Evaluate ``checkpoint`` on the test split of the shards at ``data``.

    protocols: names ("10-40", "10-40-last10", or any "S-K"); None = the dataset's protocols
    that its windows hold (``default_protocols``). Returns the report (also written to
    ``output/summary.json`` with the curves when ``output`` is given):
    {"checkpoint", "data", "config", "lpips", "protocols": {name: MetricAccumulator.summary()},
     "baselines": {name: {"copy_last": summary, "zeros": summary}}, "verdict": {name: line},
     "inference_time": {"S->K": time_inference(...)}}.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 (or None for all), got {max_samples}")
    cfg = checkpoint_config(checkpoint, preset)                       # cheap: no weights yet
    info = data_info(data)
    protos = ([resolve_protocol(p) for p in protocols] if protocols
              else default_protocols(cfg, info))
    check_compatible(cfg, info, protos)
    if info["test_rows"] == 0:
        raise DataMismatchError(f"{data} has no test windows (manifest rows.test = 0)")

    dev = resolve_device(device)
    model, cfg = load_for_inference(checkpoint, preset, dev)
    lp = load_lpips(dev) if lpips else None
    horizon = max(p.out_len for p in protos)
    if log:
        log(f"evaluating {checkpoint} on {data} ({info['test_rows']} test windows, protocols "
            f"{', '.join(p.name for p in protos)}, {dev})")

    first: list[torch.Tensor] = []

    def batches():
        for w in test_windows(data, short_len=cfg.short_len, out_len=horizon,
                              batch_size=batch_size, max_windows=max_samples):
            if not first:
                first.append(w[:1])              # the timing input
            yield w

    scored = summarize_scores(score_windows(model, batches(), protos, lp, dev))
    report = {"checkpoint": str(checkpoint), "data": str(data), "config": cfg.to_dict(),
              "device": str(dev),
              "lpips": "available" if lp else
                       (_unavailable(lp.reason) if lp is not None else "not computed"),
              **scored, "inference_time": {}}
    if timing and first:
        short = first[0][:, :cfg.short_len].to(dev)
        for k in sorted({p.out_len for p in protos}):
            t = time_inference(model, short, k, warmup=timing_warmup, repeats=timing_repeats)
            report["inference_time"][t["protocol"]] = t
    if output is not None:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        write_curves(report, out)
        (out / "summary.json").write_text(json.dumps(report, indent=2))
    if log:
        log(format_report(report))
        if output is not None:
            log(f"wrote {Path(output) / 'summary.json'} and per-timestep curves (CSV, PNG)")
    return report

