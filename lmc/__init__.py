"""LMC-Memory: video prediction recalling long-term motion context via memory alignment learning.

    import lmc
    cfg = lmc.preset("paper-kth")
    model = lmc.LMCModel(cfg)
    pred = model(short, out_len=40)               # phase 2 / inference
    align = lmc.MemoryAlignment(model)            # Algorithm 1
    losses = align.step(window)
    m = lmc.frame_metrics(pred, target)

Layout (what may import what):

    lmc/*.py          the paper in plain PyTorch, no Ray: config, model, alignment (Algorithm 1),
                      metrics, protocols, baselines, scoring, checkpoint, reference, plots,
                      accel (compile check, CUDA-graph rollout)
    lmc/train/        Ray Train: run settings, the driver, the per-worker trainer, its CLI
    lmc/experiments/  Ray Tune sweeps and the Table 4 ablation, built on lmc.train
    lmc/tools/        evaluate, predict, memory analysis: checkpoints in, numbers and pictures out
                      (no Ray)

The top level imports neither sub-packages nor Ray; ``pipeline`` (the data side) never imports
``lmc``.
"""
from .alignment import MemoryAlignment, NonFiniteLossError, prediction_loss
from .config import PRESETS, ConfigError, LMCConfig, preset
from .model import LMCModel
from .metrics import (LPIPSMetric, LPIPSUnavailable, MetricAccumulator, frame_metrics, load_lpips,
                      lpips_status, summarize)
from .protocols import PROTOCOLS, Protocol, get_protocol
from .reference import CheckpointError, from_reference_checkpoint

__all__ = [
    "LMCConfig", "ConfigError", "PRESETS", "preset",
    "LMCModel", "MemoryAlignment", "NonFiniteLossError", "prediction_loss",
    "from_reference_checkpoint", "CheckpointError",
    "frame_metrics", "PROTOCOLS", "Protocol", "get_protocol", "summarize", "MetricAccumulator",
    "load_lpips", "lpips_status", "LPIPSMetric", "LPIPSUnavailable",
]
