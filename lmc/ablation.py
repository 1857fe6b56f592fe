"""Table 4 of the paper: the same training budget for the three network designs, scored on the
last 10 of the future frames, with the inference cost of each.

    from lmc.ablation import run_ablation
    rows = run_ablation(lmc.preset("paper-kth"), data="shards/kth", storage="runs",
                        name="table4")

Each design is one Ray Train run of the training driver (``lmc.train.train``) with the same
config except ``query``: "none" (Model w/o LMC-Memory), "global" (LMC-Memory with a non-local,
globally pooled query) and "local" (the paper's local motion context). The final checkpoint of
each run is then evaluated with ``lmc.evaluate`` under the last-10 protocol of the data's
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

from .baselines import BASELINES
from .config import LMCConfig
from .evaluate import data_info, evaluate, last_n_protocol

DESIGNS = {
    "none": "Model w/o LMC-Memory",
    "global": "Model w/ LMC-Memory (Non-local Motion Context)",
    "local": "Model w/ LMC-Memory (Local Motion Context)",
}


def _local_checkpoint(run_uri: str, tmp: str) -> str:
    """The run's latest checkpoint folder as a local path (copied from s3:// when needed)."""
    from .checkpoint import CONFIG_FILE, MODEL_FILE
    from .train import storage_location, latest_checkpoint

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


def run_ablation(cfg: LMCConfig, *, data: str, storage: str, name: str = "ablation",
                 designs=tuple(DESIGNS), last: int = 10, eval_windows: int | None = None,
                 batch_size: int = 8, timing_repeats: int = 10, run_settings: dict | None = None,
                 log=print) -> list[dict]:
    """Train ``cfg`` once per query design (runs ``<storage>/<name>-<design>``), evaluate the
    final checkpoints on the last ``last`` future frames, and return one row per design:
    {"design", "query", "label", "run", "protocol", "mean": {metric: value}, "lpips",
     "inference_s", "parameters"}. ``run_settings``: extra ``RunSettings`` fields (num_workers,
    checkpoint_every, ...). Finished runs are resumed, i.e. not trained again."""
    from .train import RunSettings, train, validate

    unknown = [d for d in designs if d not in DESIGNS]
    if unknown:
        raise ValueError(f"unknown design(s) {unknown}; allowed: {', '.join(DESIGNS)}")
    info = data_info(data)
    horizon = info["window_len"] - cfg.short_len
    protocol = last_n_protocol(cfg.short_len, horizon, last)
    configs = {d: dataclasses.replace(cfg, query=d) for d in designs}   # validated here, up front
    settings = {d: RunSettings(data=data, storage=storage, name=f"{name}-{d}",
                               **(run_settings or {})) for d in designs}
    for d in designs:    # every design's config, data and storage checked before any training
        validate(configs[d], settings[d])
    rows = []
    for d in designs:
        if log:
            log(f"== {DESIGNS[d]} (query={d}): {configs[d].iterations} iterations ==")
        metrics = train(configs[d], settings[d], verbose=bool(log))
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = _local_checkpoint(metrics["run"], tmp)
            rep = evaluate(ckpt, data, protocols=[protocol], batch_size=batch_size,
                           max_samples=eval_windows, timing=timing_repeats > 0,
                           timing_repeats=max(1, timing_repeats), log=None)
        p = rep["protocols"][protocol.name]
        timing = next(iter(rep["inference_time"].values()), None)
        from .model import LMCModel
        rows.append({"design": d, "query": d, "label": DESIGNS[d], "run": metrics["run"],
                     "protocol": protocol.name, "num_samples": p["num_samples"],
                     "mean": p["mean"], "lpips": rep["lpips"],
                     "baselines": {b: v["mean"] for b, v in rep["baselines"][protocol.name].items()},
                     "verdict": rep["verdict"][protocol.name],
                     "inference_s": timing["median_s"] if timing else None,
                     "inference_protocol": timing["protocol"] if timing else None,
                     "parameters": LMCModel(configs[d]).num_parameters()})
    return rows


def format_table(rows: list[dict]) -> str:
    """Table 4's layout: PSNR, SSIM, LPIPS (x1e-3) on the last frames, plus MSE and the
    batch-1 inference time."""
    if not rows:
        return "(no rows)"
    r0 = rows[0]
    lines = [f"Table 4 ({r0['protocol']}, {r0['num_samples']} test sequences; inference "
             f"{r0['inference_protocol']}, batch 1)",
             f"{'design':<50}{'PSNR':>8}{'SSIM':>8}{'LPIPS':>8}{'MSE':>10}{'time (s)':>10}"]

    def line(label, m, seconds):
        lp = f"{m['lpips'] * 1e3:.1f}" if "lpips" in m else "n/a"
        t = f"{seconds:.4f}" if seconds is not None else "n/a"
        return f"{label:<50}{m['psnr']:>8.2f}{m['ssim']:>8.3f}{lp:>8}{m['mse']:>10.1f}{t:>10}"

    for r in rows:
        lines.append(line(r["label"], r["mean"], r["inference_s"]))
    for b, m in r0.get("baselines", {}).items():   # same windows and protocol for every design
        lines.append(line(f"baseline: {BASELINES[b]}", m, None))
    for r in rows:
        if r.get("verdict"):
            lines.append(f"{r['design']}: {r['verdict']}")
    if any("lpips" not in r["mean"] for r in rows):
        lines.append(f"LPIPS {rows[0]['lpips']}")
    return "\n".join(lines)


def write_table(rows: list[dict], path) -> None:
    """The rows as JSON (with the plain-text table beside it as .txt)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2))
    path.with_suffix(".txt").write_text(format_table(rows) + "\n")
