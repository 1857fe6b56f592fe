"""Scoring predictions: the model and the baselines on the same windows with the same metric
code, summaries with a per-metric verdict, the flat names training reports, and batch-1
inference timing.

Used by training's validation (``lmc.train``), ``lmc.tools.evaluate`` and the experiments.
Plain PyTorch; reads test windows through ``pipeline.iter_test_windows`` (pyarrow, no Ray).
"""
from __future__ import annotations

import statistics
import time
from typing import Iterable, Iterator, Sequence

import torch

from .baselines import BASELINES, baseline_prediction, verdict
from .metrics import MetricAccumulator, frame_metrics
from .protocols import Protocol

METRICS = ("mse", "mae", "psnr", "ssim", "lpips")


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
    "verdict": {name: {baseline: {"beats", "loses", "ties": [metric], "line": str}}}}: the model
    against each baseline metric by metric (``lmc.baselines.verdict``)."""
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
