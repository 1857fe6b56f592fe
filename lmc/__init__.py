"""LMC-Memory: video prediction recalling long-term motion context via memory alignment learning.

    import lmc
    cfg = lmc.preset("paper-kth")
    model = lmc.LMCModel(cfg)
    pred = model(short, out_len=40)               # phase 2 / inference
    align = lmc.MemoryAlignment(model)            # Algorithm 1
    losses = align.step(window)
    m = lmc.frame_metrics(pred, target)

The model, memory, alignment and metrics are plain PyTorch (no Ray); the Ray Train / Tune
drivers live in their own modules and import Ray only when used.
"""
from .alignment import MemoryAlignment, NonFiniteLossError, prediction_loss
from .config import PRESETS, ConfigError, LMCConfig, preset
from .model import LMCModel
from .metrics import (PROTOCOLS, LPIPSMetric, LPIPSUnavailable, MetricAccumulator, frame_metrics,
                      load_lpips, lpips_status, summarize)
from .reference import CheckpointError, from_reference_checkpoint

__all__ = [
    "LMCConfig", "ConfigError", "PRESETS", "preset",
    "LMCModel", "MemoryAlignment", "NonFiniteLossError", "prediction_loss",
    "from_reference_checkpoint", "CheckpointError",
    "frame_metrics", "PROTOCOLS", "summarize", "MetricAccumulator",
    "load_lpips", "lpips_status", "LPIPSMetric", "LPIPSUnavailable",
]
