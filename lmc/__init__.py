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
from .reference import CheckpointError, from_reference_checkpoint

__all__ = [
    "LMCConfig", "ConfigError", "PRESETS", "preset",
    "LMCModel", "MemoryAlignment", "NonFiniteLossError", "prediction_loss",
    "from_reference_checkpoint", "CheckpointError", "frame_metrics",
]


def __getattr__(name):
    # metrics pull in torch-only helpers; imported on first use
    if name == "frame_metrics":
        from .metrics import frame_metrics
        return frame_metrics
    raise AttributeError(f"module 'lmc' has no attribute {name!r}")
