"""One Ray Train worker of `lmc.train`: Algorithm 1 on its dataset shard under DDP.

Per step: the batch from `ray.train.get_dataset_shard("train")` with its long-clip offset r,
`MemoryAlignment.step` (phase 1 then phase 2, DESIGN §4); every `checkpoint_every` iterations
rank 0 saves model, optimizer, iteration, RNG states and config through `ray.train.report`;
every `eval_every` iterations rank 0 scores test windows (phase 2 only). At the end rank 0
evaluates under the protocol and writes metrics.json, curves and the prediction strip into the
run folder. A restarted worker group continues from `ray.train.get_checkpoint()`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from typing import Any

import torch

from .alignment import MemoryAlignment, NonFiniteLossError
from .checkpoint import (load_model, load_train_state, rng_state, save_checkpoint,
                         set_rng_state)
from .config import LMCConfig
from .baselines import BASELINES
from .evaluate import (score_windows, summarize_scores, test_windows, validation_metrics,
                       write_curves, write_learning_curves)
from .metrics import Protocol
from .model import LMCModel
from .train import (CHECKPOINT_PREFIX, ERROR_FILE, METRICS_FILE, STRIP_NAME, RunSettings,
                    storage_location)

def _digest(params) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _parts(core) -> dict[str, list]:
    parts = {"all": list(core.parameters())}
    if core.has_memory:
        parts.update(memory=[core.memory.slots],
                     e_lmc=list(core.motion_context_encoder.parameters()),
                     e_mm=list(core.motion_matching_encoder.parameters()))
    return parts


class _Tracer:
    """Test hook: hashes of the parameters after every optimizer step (phase 1, phase 2)."""

    def __init__(self, core, align, out_dir: str, rank: int, start: int):
        self.core, self.align, self.records = core, align, []
        self.path = os.path.join(out_dir, f"rank{rank}-start{start}.json")
        self.before = None
        align.optimizer.register_step_post_hook(self._after_step)

    def begin(self, iteration: int):
        self.records.append({"iteration": iteration, "phase": 0,
                             **{k: _digest(v) for k, v in _parts(self.core).items()}})

    def _after_step(self, *_):
        phase = 1 if self.records[-1]["phase"] != 1 else 2
        self.records.append({"iteration": self.records[-1]["iteration"], "phase": phase,
                             **{k: _digest(v) for k, v in _parts(self.core).items()}})

    def save(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "w") as f:
            json.dump(self.records, f)


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: Algorithm 1 on its dataset shard under DDP."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    import pipeline

    os.environ.update(config.get("s3_env", {}))

    cfg = LMCConfig.from_dict(config["model"])
    s = RunSettings(**config["run"])
    protocol = Protocol(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in config["protocol"].items()})
    run = storage_location(config["run_uri"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(s.threads_per_worker or max(1, int(s.cpus_per_worker)))
    device = ray.train.torch.get_device()
    per_worker = cfg.batch_size // world

    # Model, then the latest checkpoint (if any), then DDP (which broadcasts rank 0's weights).
    torch.manual_seed(cfg.seed)
    ckpt = ray.train.get_checkpoint()
    state = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            core = load_model(d, cfg)            # refuses another architecture, listing keys
            state = load_train_state(d)
    else:
        core = LMCModel(cfg)
    if s.compile:
        core.compile()
    model = ray.train.torch.prepare_model(
        core, parallel_strategy_kwargs={"find_unused_parameters": True})  # each phase leaves an encoder unused
    core = model.module if hasattr(model, "module") else model
    align = MemoryAlignment(model, autocast_dtype=torch.bfloat16 if s.autocast == "bf16" else None)
    history, val_history, starts = [], [], []
    if state is not None:
        align.load_state_dict(state["alignment"])
        set_rng_state(state["rng"])
        history, val_history = state.get("history", []), state.get("validation", [])
        starts = state.get("starts", [])
    start = align.iteration
    starts = starts + [start]
    log_every = s.log_every or max(1, cfg.iterations // 1000)
    eval_every = s.eval_every or s.checkpoint_every
    tracer = (_Tracer(core, align, s.debug["trace_dir"], rank, start)
              if s.debug.get("trace_dir") else None)
    lpips = None
    val_baselines: dict = {}       # baselines' validation summaries, scored at the first one
    writer = _TensorBoard(run, rank) if rank == 0 else None

    batches = pipeline.iter_train_batches(
        ray.train.get_dataset_shard("train"), batch_size=per_worker, short_len=cfg.short_len,
        out_len=cfg.out_len, long_len=cfg.long_len, epochs=None,
        local_shuffle_buffer_size=pipeline.shuffle_buffer_rows(
            cfg.window_len * cfg.img_size ** 2 * cfg.channels, per_worker),
        seed=cfg.seed + 7919 * rank + 104_729 * start)   # resumed runs see fresh orders
    t_window, wait_window, steps_window = time.perf_counter(), 0.0, 0
    last_metrics: dict[str, Any] = {}

    def train_state():
        return {"alignment": align.state_dict(), "rng": rng_state(), "history": history,
                "validation": val_history, "starts": starts}

    def report(metrics: dict, with_checkpoint: bool):
        it = align.iteration
        if with_checkpoint and rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, core, cfg, train_state())
                if writer:
                    writer.flush()
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"{CHECKPOINT_PREFIX}{it:09d}")
        else:
            ray.train.report(metrics)

    try:
        while align.iteration < cfg.iterations:
            it = align.iteration
            _maybe_crash(s.debug, rank, it)
            t0 = time.perf_counter()
            batch = next(batches)
            wait_window += time.perf_counter() - t0
            window = batch["window"].to(device, non_blocking=True)
            if s.debug.get("nan_at") == it:
                window = window * float("nan")
            if tracer:
                tracer.begin(it)
            losses = align.step(window, long_start=batch["long_start"])
            steps_window += 1
            done = align.iteration
            if done % log_every == 0 or done == cfg.iterations or done == start + 1:
                history.append({"iteration": done, **losses})
                if writer:
                    writer.scalars(done, {f"train/{k}": v for k, v in losses.items()})
            checkpoint_now = done % s.checkpoint_every == 0 or done == cfg.iterations
            if done % eval_every == 0 or checkpoint_now:
                elapsed = time.perf_counter() - t_window
                last_metrics = {"iteration": done, **losses,
                                "samples_per_s": steps_window * cfg.batch_size / elapsed,
                                "data_wait_fraction": wait_window / elapsed}
                if done % eval_every == 0 and rank == 0:
                    if lpips is None:
                        lpips = _load_lpips(device)
                    # the baselines' scores on these fixed windows never change: once a run
                    val = _evaluate(core, s, protocol, s.eval_windows, lpips,
                                    baselines=() if val_baselines else tuple(BASELINES))
                    val_baselines = val_baselines or val["baselines"]
                    val_means = validation_metrics(val["test"], val_baselines)
                    val_history.append({"iteration": done, **val_means})
                    last_metrics.update(val_means)
                if writer:
                    writer.scalars(done, {k if k.startswith("val_") else f"train/{k}": v
                                          for k, v in last_metrics.items() if k != "iteration"})
                report(last_metrics, checkpoint_now)
                t_window, wait_window, steps_window = time.perf_counter(), 0.0, 0
    except NonFiniteLossError as e:
        # Every rank raises at the same step (the finite flag is all-reduced). Retrying from
        # the last checkpoint would replay the same batch: stop the run and tell the driver.
        if rank == 0:
            run.write_bytes(json.dumps({"error": "NonFiniteLossError", "message": str(e)})
                            .encode(), ERROR_FILE)
        return
    finally:
        if tracer:
            tracer.save()

    if align.iteration == start:  # resumed a finished run: report once so the run has a result
        report({"iteration": start}, with_checkpoint=False)

    # Final test evaluation under the protocol (rank 0), then metrics.json and pictures.
    if rank == 0:
        if lpips is None:
            lpips = _load_lpips(device)
        scored = _evaluate(core, s, protocol, s.test_windows, lpips)
        summary = scored["test"]
        metrics = {"run": run.uri, "iterations": align.iteration, "starts": starts,
                   "world_size": world, "config": cfg.to_dict(), "protocol": protocol.name,
                   **scored, "loss_history": history, "validation_history": val_history,
                   "last_report": last_metrics}
        if s.artifacts:
            with tempfile.TemporaryDirectory() as tmp:
                _pictures(core, s, protocol, metrics, tmp)
                for f in sorted(os.listdir(tmp)):
                    run.put_file(os.path.join(tmp, f), f)
        run.write_bytes(json.dumps(metrics, indent=1).encode(), METRICS_FILE)
        if writer:
            writer.scalars(align.iteration, {f"test/{k}": v for k, v in summary["mean"].items()})
            writer.scalars(align.iteration, {f"test/{b}_{k}": v
                                             for b, rep in scored["baselines"].items()
                                             for k, v in rep["mean"].items()})
            writer.close()


def _evaluate(core, s: RunSettings, protocol: Protocol, max_windows, lpips,
              baselines=tuple(BASELINES)) -> dict:
    """Phase-2 metrics of ``core`` and of ``baselines`` on (the first ``max_windows``) test
    windows: {"test": summary, "baselines": {name: summary}, "verdict": one line or None}."""
    windows = test_windows(s.data, short_len=protocol.short_len, out_len=protocol.out_len,
                           batch_size=s.eval_batch_size, max_windows=max_windows)
    scored = summarize_scores(score_windows(core, windows, [protocol], lpips, baselines=baselines))
    name = protocol.name
    return {"test": scored["protocols"][name], "baselines": scored["baselines"][name],
            "verdict": scored["verdict"].get(name)}


STRIP_CANDIDATES = 64     # test windows the prediction strip is chosen from


@torch.no_grad()
def _pictures(core, s: RunSettings, protocol: Protocol, metrics: dict, folder: str) -> None:
    """curves_<protocol>.csv/.png (baselines dashed), learning_curves.csv/.png and
    prediction.png/.gif of the test window that moves most among the first few (the largest
    copy-last-frame error: a still window would show nothing of the motion)."""
    from .predict import save_strip, to_uint8

    write_curves({"protocols": {protocol.name: metrics["test"]},
                  "baselines": {protocol.name: metrics["baselines"]}}, folder)
    write_learning_curves(metrics, folder)
    candidates = torch.cat(list(test_windows(s.data, short_len=protocol.short_len,
                                             out_len=protocol.out_len, batch_size=16,
                                             max_windows=STRIP_CANDIDATES)))
    short, future = candidates[:, :protocol.short_len], candidates[:, protocol.short_len:]
    motion = (future - short[:, -1:]).square().flatten(1).sum(1)      # copy-last error
    window = candidates[int(motion.argmax())][None]
    device = next(core.parameters()).device
    was_training = core.training
    core.eval()
    pred = core(window[:, :protocol.short_len].to(device), out_len=protocol.out_len)[0]
    core.train(was_training)
    clip = window[0]
    save_strip(to_uint8(clip[:protocol.short_len]), to_uint8(clip[protocol.short_len:]),
               to_uint8(pred), folder, name=STRIP_NAME)


def _maybe_crash(debug: dict, rank: int, iteration: int) -> None:
    """Test hook: the process of rank `crash.rank` dies at `crash.iteration`, once (marker)."""
    crash = debug.get("crash")
    if crash and crash["rank"] == rank and crash["iteration"] == iteration:
        if not os.path.exists(crash["marker"]):
            # Ray Train registers a reported checkpoint when it next polls the workers (every
            # 2 s); `after_s` lets a test die only once the last one is surely registered.
            time.sleep(crash.get("after_s", 0))
            with open(crash["marker"], "w") as f:
                f.write(f"rank {rank} died at iteration {iteration}\n")
            os._exit(1)


def _load_lpips(device):
    from .metrics import load_lpips, lpips_status
    ok, reason = lpips_status()
    if not ok:
        from .metrics import LPIPSUnavailable
        return LPIPSUnavailable(reason)
    return load_lpips(device)


class _TensorBoard:
    """tensorboardX event files in <run>/tensorboard (written locally, uploaded for s3://)."""

    def __init__(self, run, rank: int):
        from tensorboardX import SummaryWriter
        self.run = run
        self.local = run.path("tensorboard") if run.is_local else tempfile.mkdtemp(prefix="lmc-tb-")
        self.w = SummaryWriter(self.local)

    def scalars(self, step: int, values: dict) -> None:
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.w.add_scalar(k, v, step)

    def flush(self) -> None:
        self.w.flush()
        if not self.run.is_local:
            for f in os.listdir(self.local):
                with open(os.path.join(self.local, f), "rb") as fh:
                    self.run.write_bytes(fh.read(), "tensorboard", f)

    def close(self) -> None:
        self.flush()
        self.w.close()
