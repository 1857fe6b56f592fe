"""Evaluate a checkpoint on test shards: the paper's metrics, per-timestep curves, inference time.

    from lmc.tools.evaluate import evaluate
    report = evaluate("runs/kth/checkpoint", "shards/kth", protocols=["10-20", "10-40"],
                      output="eval/kth")

What it does, in order (docs/design.md §6):
  1. loads the model (a checkpoint folder of this project, or a reference ``.pt`` file with a
     preset) and the test shards' facts (``pipeline.DatasetFacts``), and checks they match:
     channels, image size, and windows long enough for every protocol. A mismatch is a
     ``pipeline.DataError`` naming both sides, raised before any frame is read; so is a test
     shard file that is not the one the manifest lists (``pipeline.verify_dataset``: size,
     sha256 once per file change, rows' shape);
  2. predicts every test window once with the longest horizon asked for (the rollout is
     autoregressive without teacher forcing and F_mem depends on the short clip only, so the
     first K frames of a 40-frame prediction *are* the K-frame prediction) and scores each
     protocol's frames with ``lmc.scoring`` / ``lmc.metrics`` (MSE, MAE, PSNR, SSIM and LPIPS when its weights are
     on this machine, else "unavailable: <reason>");
  3. times inference the way the paper's Table 4 does: one sequence (batch 1), after warm-up
     runs, for each horizon (10->30, 10->40, ...), median and mean seconds per sequence;
  4. scores the baselines (copy-last-frame, all-zero frame; ``lmc.baselines``) on the same
     windows with the same metric code, and judges the model against each metric by metric
     (``lmc.baselines.verdict``: "vs copy-last: beats on MSE; loses on PSNR, SSIM");
  5. writes ``summary.json``, and per protocol ``curves_<protocol>.csv`` and ``.png`` (the
     baselines drawn on the model's axes; ``lmc.plots``).

Reading is plain pyarrow through ``pipeline.iter_test_windows`` (deterministic order, no Ray);
nothing here imports Ray, so it runs in a notebook, in a job, or on a GPU box alike.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..baselines import verdict
from ..checkpoint import checkpoint_config, load_for_inference, resolve_device
from ..config import LMCConfig
from ..metrics import load_lpips
from ..plots import _fmt, write_curves
from ..protocols import Protocol, default_protocols, get_protocol
from ..scoring import score_windows, summarize_scores, test_windows, time_inference
from .checks import check_device, check_output_folder


def check_protocols(cfg: LMCConfig, protocols: Sequence[Protocol]) -> None:
    """Every protocol must feed the checkpoint the short clip length it was trained on."""
    for p in protocols:
        if p.short_len != cfg.short_len:
            raise ValueError(f"protocol {p.name} feeds {p.short_len} input frames but the "
                             f"checkpoint was trained on short clips of {cfg.short_len} "
                             "(config field 'short_len')")


def format_report(report: dict) -> str:
    """A plain-text table: one row per protocol (and per baseline under it), the paper's
    metrics, the verdict (per baseline, metric by metric: ``lmc.baselines.verdict``), then the
    timings."""
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
    for name, rep in report["protocols"].items():    # the verdict, one line per baseline
        base = report.get("baselines", {}).get(name, {})
        for v in verdict(rep["mean"], {b: brep["mean"] for b, brep in base.items()}).values():
            lines.append(f"{name} {v['line']}")
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
     "baselines": {name: {"copy_last": summary, "zeros": summary}},
     "verdict": {name: {baseline: {"beats", "loses", "ties": [metric], "line"}}},
     "inference_time": {"S->K": time_inference(...)}}.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 (or None for all), got {max_samples}")
    check_device(device)
    if output is not None:
        check_output_folder(output, "summary.json, curves_<protocol>.csv and .png")
    from pipeline import DatasetFacts, verify_dataset

    cfg = checkpoint_config(checkpoint, preset)                       # cheap: no weights yet
    facts = DatasetFacts.read(data)
    verify_dataset(facts, ("test",), log=log)     # the files are the manifest's (sha256, rows)
    protos = ([get_protocol(p) for p in protocols] if protocols
              else default_protocols(cfg.short_len, facts.dataset, facts.test_window_len))
    check_protocols(cfg, protos)
    facts.require(who="the checkpoint", channels=cfg.channels, img_size=cfg.img_size,
                  splits=("test",))
    for p in protos:
        facts.require(who=f"protocol {p.name}", test_len=p.short_len + p.out_len)

    dev = resolve_device(device)
    model, cfg = load_for_inference(checkpoint, preset, dev)
    lp = load_lpips(dev) if lpips else None
    horizon = max(p.out_len for p in protos)
    if log:
        log(f"evaluating {checkpoint} on {data} ({facts.rows['test']} test windows, protocols "
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

