"""Table 4 of the paper: the same training budget for the three network designs, scored on the
last 10 of the future frames, with the inference cost of each.

    from lmc.experiments.ablation import run_ablation
    from lmc.train import RunSettings
    rows = run_ablation(lmc.preset("paper-kth"),
                        RunSettings(data="shards/kth", storage="runs", name="table4"))

Each design is one Ray Train run of the training driver (``lmc.train.train``) with the same
config except ``query``: "none" (Model w/o LMC-Memory), "global" (LMC-Memory with a non-local,
globally pooled query) and "local" (the paper's local motion context). The final checkpoint of
each run is then evaluated with ``lmc.tools.evaluate`` under the last-10 protocol of the data's
test horizon ("10-40-last10" for KTH's 10->40; "S-K-last10" otherwise, the whole horizon when
K <= 10), with the batch-1 inference time for S->K.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..baselines import BASELINES, verdict, verdict_line
from ..checkpoint import CONFIG_FILE, MODEL_FILE
from ..config import LMCConfig
from ..model import LMCModel
from ..protocols import last_n_protocol
from ..tools.evaluate import evaluate
from ..train.settings import RunSettings

# The ablation job's own run defaults (over RunSettings'): runs <storage>/ablation-<design>, one
# worker each.
ABLATION_RUN_DEFAULTS = {"name": "ablation", "num_workers": 1}

DESIGNS = {
    "none": "Model w/o LMC-Memory",
    "global": "Model w/ LMC-Memory (Non-local Motion Context)",
    "local": "Model w/ LMC-Memory (Local Motion Context)",
}


def _local_checkpoint(run_uri: str, tmp: str) -> str:
    """The run's latest checkpoint folder as a local path (copied from s3:// when needed)."""
    from ..train import latest_checkpoint, storage_location

    run = storage_location(run_uri)
    name = latest_checkpoint(run)
    if name is None:
        raise RuntimeError(f"{run_uri} has no checkpoint_* folder after training")
    if run.is_local:
        return run.path(name)
    for f in (MODEL_FILE, CONFIG_FILE):
        local, is_temp = run.fetch(name, f)
        shutil.copy(local, os.path.join(tmp, f))
        if is_temp:
            os.remove(local)
    return tmp


def run_ablation(cfg: LMCConfig, settings: RunSettings, *, designs=tuple(DESIGNS), seeds=None,
                 last: int = 10, eval_windows: int | None = None, batch_size: int = 8,
                 timing_repeats: int = 10, address: str | None = None,
                 log=print) -> list[dict]:
    """Train ``cfg`` once per query design, or once per design and seed (``seeds``, config
    field ``seed``), each run with ``settings`` but its name: ``<storage>/<name>-<design>``
    (``-s<seed>`` with seeds). Then evaluate the final checkpoints on the last ``last`` future
    frames (at most ``eval_windows`` test windows) and return one row per run:
    {"design", "query", "seed", "label", "run", "protocol", "mean": {metric: value}, "lpips",
     "baselines", "verdict" (per baseline, metric by metric), "inference_s", "parameters"}.
    Finished runs are resumed, i.e. not trained again."""
    from pipeline import DatasetFacts

    from ..train import train, validate

    if not isinstance(settings, RunSettings):
        raise TypeError(f"run_ablation: settings must be a RunSettings, not "
                        f"{type(settings).__name__}")

    unknown = [d for d in designs if d not in DESIGNS]
    if unknown:
        raise ValueError(f"unknown design(s) {unknown}; allowed: {', '.join(DESIGNS)}")
    data = settings.data
    horizon = DatasetFacts.read(data).test_window_len - cfg.short_len
    protocol = last_n_protocol(cfg.short_len, horizon, last)
    runs = [(d, s) for s in (seeds or [None]) for d in designs]
    configs = {(d, s): dataclasses.replace(cfg, query=d, **({} if s is None else {"seed": s}))
               for d, s in runs}                                  # validated here, up front
    run_settings = {(d, s): dataclasses.replace(
        settings, name=f"{settings.name}-{d}" + ("" if s is None else f"-s{s}")) for d, s in runs}
    for key in runs:     # every run's config, data and storage checked before any training
        validate(configs[key], run_settings[key])
    rows = []
    for d, seed in runs:
        if log:
            log(f"== {DESIGNS[d]} (query={d}, seed {configs[d, seed].seed}): "
                f"{configs[d, seed].iterations} iterations ==")
        metrics = train(configs[d, seed], run_settings[d, seed], address=address,
                        verbose=bool(log))
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = _local_checkpoint(metrics["run"], tmp)
            rep = evaluate(ckpt, data, protocols=[protocol], batch_size=batch_size,
                           max_samples=eval_windows, timing=timing_repeats > 0,
                           timing_repeats=max(1, timing_repeats), log=None)
        timing = next(iter(rep["inference_time"].values()), None)
        rows.append(table_row(configs[d, seed], metrics["run"], protocol.name,
                              rep["protocols"][protocol.name], rep["baselines"][protocol.name],
                              rep["lpips"], timing))
    return rows


def table_row(cfg: LMCConfig, run: str, protocol: str, scores: dict, baselines: dict,
              lpips: str, timing: dict | None = None) -> dict:
    """One run's row of the table: ``scores`` and each of ``baselines`` are a protocol's summary
    ({"num_samples", "mean"}), ``timing`` the batch-1 inference time (None: not timed). Its
    "verdict" is ``lmc.baselines.verdict`` of those means: {baseline: {"beats", "loses", "ties",
    "line"}}."""
    base = {b: v["mean"] for b, v in baselines.items()}
    return {"design": cfg.query, "query": cfg.query, "seed": cfg.seed, "label": DESIGNS[cfg.query],
            "run": run, "protocol": protocol, "num_samples": scores["num_samples"],
            "mean": scores["mean"], "lpips": lpips,
            "baselines": base, "verdict": verdict(scores["mean"], base),
            "inference_s": timing["median_s"] if timing else None,
            "inference_protocol": timing["protocol"] if timing else None,
            "parameters": LMCModel(cfg).num_parameters()}


def format_table(rows: list[dict]) -> str:
    """Table 4's layout: PSNR, SSIM, LPIPS (x1e-3) on the last frames, plus MSE and the
    batch-1 inference time, then the baselines on the same windows. With several seeds per
    design, each cell is the mean +- the standard deviation over the seeds."""
    if not rows:
        return "(no rows)"
    r0 = rows[0]
    by_design: dict[str, list[dict]] = {}
    for r in rows:
        by_design.setdefault(r["design"], []).append(r)
    n_seeds = max(len(v) for v in by_design.values())
    spread = n_seeds > 1
    w = 16 if spread else 8
    lines = [f"Table 4 ({r0['protocol']}, {r0['num_samples']} test sequences; inference "
             f"{r0['inference_protocol']}, batch 1"
             + (f"; mean +- std over {n_seeds} seeds)" if spread else ")"),
             f"{'design':<50}{'PSNR':>{w}}{'SSIM':>{w}}{'LPIPS':>{w}}{'MSE':>{w}}{'time (s)':>10}"]

    def cell(values, fmt):
        values = [v for v in values if v is not None]
        if not values:
            return f"{'n/a':>{w}}"
        mean = sum(values) / len(values)
        if len(values) == 1:
            return f"{mean:>{w}{fmt}}"
        std = (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5
        return f"{f'{mean:{fmt}} +- {std:{fmt}}':>{w}}"

    def line(label, means, seconds):
        lp = [m["lpips"] * 1e3 if "lpips" in m else None for m in means]
        t = [s for s in seconds if s is not None]
        return (f"{label:<50}{cell([m['psnr'] for m in means], '.2f')}"
                f"{cell([m['ssim'] for m in means], '.3f')}{cell(lp, '.1f')}"
                f"{cell([m['mse'] for m in means], '.2f')}"
                + (f"{sorted(t)[len(t) // 2]:>10.4f}" if t else f"{'n/a':>10}"))

    for d, rs in by_design.items():
        lines.append(line(rs[0]["label"], [r["mean"] for r in rs], [r["inference_s"] for r in rs]))
    for b, m in r0.get("baselines", {}).items():   # same windows and protocol for every run
        lines.append(line(f"baseline: {BASELINES[b]}", [m], [None]))
    for r in rows:    # the verdict of each run, judged again from its means (rows of any age)
        if r.get("baselines"):
            lines.append(f"{r['design']}" + (f" seed {r['seed']}" if spread else "")
                         + f": {verdict_line(verdict(r['mean'], r['baselines']))}")
    if any("lpips" not in r["mean"] for r in rows):
        lines.append(f"LPIPS {rows[0]['lpips']}")
    return "\n".join(lines)


def write_table(rows: list[dict], path) -> None:
    """The rows as JSON (with the plain-text table beside it as .txt)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2))
    path.with_suffix(".txt").write_text(format_table(rows) + "\n")
