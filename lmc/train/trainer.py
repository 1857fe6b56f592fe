"""The training loop under Ray Train: ``train_loop_per_worker`` is what ``TorchTrainer`` runs
on every worker. It builds the loop's ``WorkerContext`` from Ray Train's (rank, world size,
device, DDP through ``prepare_model``, the worker's shard of the train split, ``report``),
runs ``loop.Loop`` and, on rank 0 of a finished run, ``finish.finish_run``. Its return value
(rank 0's) reaches the driver as ``Result.return_value``: the run's outcome.
"""
from __future__ import annotations

import os

from .control import describe, deterministic
from .finish import finish_run
from .loop import Loop, WorkerContext


def ray_context(cfg, progress=None, resize_requests=None) -> WorkerContext:
    """This Ray Train worker's context."""
    import ray
    import ray.train
    import ray.train.torch

    import pipeline

    ctx = ray.train.get_context()

    def open_batches(batch_size: int, start: int):
        """This worker's endless stream of training windows (a resumed run shuffles afresh)."""
        seed = cfg.seed + 7919 * ctx.get_world_rank() + 104_729 * start
        return pipeline.iter_train_batches(
            ray.train.get_dataset_shard("train"), batch_size=batch_size,
            window_len=cfg.window_len, epochs=None,
            expect={"channels": cfg.channels, "height": cfg.img_size, "width": cfg.img_size},
            local_shuffle_buffer_size=pipeline.shuffle_buffer_rows(
                cfg.window_len * cfg.img_size ** 2 * cfg.channels, batch_size),
            seed=seed)

    return WorkerContext(
        rank=ctx.get_world_rank(), world=ctx.get_world_size(),
        device=ray.train.torch.get_device(), node_id=ray.get_runtime_context().get_node_id(),
        # DDP broadcasts rank 0's weights; each phase leaves one encoder unused
        wrap_model=lambda core: ray.train.torch.prepare_model(
            core, parallel_strategy_kwargs={"find_unused_parameters": True}),
        open_batches=open_batches, report=ray.train.report, progress=progress,
        preemption=ray.train.get_preemption_info, resize_requests=resize_requests)


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train's entry point: ``config`` is the driver's ``train_loop_config``. Returns the
    outcome: {"status": "finished" | "stopped" | "failed", "iteration", "message", ...}."""
    os.environ.update(config["s3_env"])    # before any s3:// access on this worker
    try:
        loop = Loop(config["model"], config["settings"], config["protocol"], config["run_uri"],
                    ray_context(config["model"], config.get("progress"),
                                config.get("resize_requests")), config["hooks"],
                    config["submission"], lease_owner=config.get("lease_owner"),
                    changes=config.get("changes"),
                    data_fingerprint=config.get("data_fingerprint"))
        outcome = loop.fit()
        if outcome["status"] == "finished" and loop.rank == 0:
            finish_run(loop)
        return outcome
    except Exception as e:
        if not deterministic(e):
            raise                            # Ray Train restarts the worker group
        return {"status": "failed", "iteration": None, "message": describe(e)}
