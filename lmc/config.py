"""The one configuration of a run: model shape, clip lengths and training hyper-parameters.

A config is a frozen dataclass, validated once when it is made (``LMCConfig(...)``,
``dataclasses.replace(cfg, ...)`` and ``preset(...)`` all validate), so the rest of the code
trusts it. Every error names the field and the allowed values.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any, Callable

QUERY_MODES = ("local", "global", "none")
OUTPUT_ACTIVATIONS = ("linear", "sigmoid")

# E_LMC / E_MM halve time three times (MaxPool3d (2,2,2) x3) on the T-1 difference frames,
# so a clip needs T - 1 >= 8 frames to keep a temporal extent of at least 1.
MIN_CLIP_LEN = 9
# E_sp downsamples by 4 and the C3D stacks by 16 (then the context embedding upsamples by 4):
# the two paths meet on the same grid only when the image size is a multiple of 16.
IMG_MULTIPLE = 16


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field and the allowed values."""


@dataclass(frozen=True)
class LMCConfig:
    """Model, data and training settings. Defaults are the paper's Moving-MNIST setting."""

    # data / clip shape
    channels: int = 1                # 1 (grayscale) or 3 (RGB)
    img_size: int = 64               # square frames, multiple of 16
    short_len: int = 10              # n: input frames
    long_len: int = 30               # N: frames of the long clip the memory stores (phase 1)
    out_len: int = 30                # K: predicted frames while training

    # model
    memory_slots: int = 100          # s: rows of the LMC-Memory M
    width: float = 1.0               # channel width multiplier; 1.0 = the paper's network
    query: str = "local"             # "local" (paper), "global" (Table 4 non-local), "none" (w/o memory)
    output_activation: str = "linear"  # "linear" (Moving-MNIST) or "sigmoid" (KTH, RGB)
    convlstm_layers: int = 4

    # training (Algorithm 1)
    lr: float = 2e-4
    batch_size: int = 16
    iterations: int = 300_000
    warmup_iterations: int = 5000    # first iterations predict only warmup_out_len frames
    warmup_out_len: int = 10
    seed: int = 1234

    def __post_init__(self) -> None:
        _validate(self)

    # -- derived channel widths (paper values at width 1.0) --
    def ch(self, paper_channels: int) -> int:
        """Channel count of a layer that has ``paper_channels`` in the reference network."""
        return max(1, int(round(paper_channels * self.width)))

    @property
    def hidden(self) -> int:
        """ConvLSTM width = E_sp output width = context-embedding output width."""
        return self.ch(128)

    @property
    def window_len(self) -> int:
        """Frames in one training window: short clip followed by its future."""
        return self.short_len + self.out_len

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LMCConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str) -> "LMCConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))


def validator(kind: str, obj: Any) -> Callable[[bool, str, str], None]:
    """The one validator of every settings dataclass (``LMCConfig``, ``RunSettings``,
    ``SweepSettings``), with one error format: ``need = validator("run setting", self)``, then
    ``need(ok, field, allowed)`` raises ``ConfigError("<kind> '<field>' = <value!r> is invalid;
    allowed: <allowed>")`` unless ``ok`` (the value read from ``obj``)."""
    def need(ok: bool, field: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"{kind} '{field}' = {getattr(obj, field)!r} is invalid; "
                              f"allowed: {allowed}")
    return need


def _validate(c: LMCConfig) -> None:
    need = validator("config field", c)
    for name in ("channels", "img_size", "short_len", "long_len", "out_len", "memory_slots",
                 "convlstm_layers", "batch_size", "iterations", "warmup_iterations",
                 "warmup_out_len", "seed"):
        v = getattr(c, name)
        need(isinstance(v, int) and not isinstance(v, bool), name, "an integer")
    need(c.channels in (1, 3), "channels", "1 (grayscale) or 3 (RGB)")
    need(c.img_size >= IMG_MULTIPLE and c.img_size % IMG_MULTIPLE == 0, "img_size",
          f"a positive multiple of {IMG_MULTIPLE} (E_sp downsamples by 4, the C3D encoders by 16)")
    need(c.short_len >= MIN_CLIP_LEN, "short_len",
          f">= {MIN_CLIP_LEN} (the C3D encoders pool time by 8 over the {MIN_CLIP_LEN - 1} "
          "difference frames)")
    need(c.out_len >= 1, "out_len", ">= 1")
    need(MIN_CLIP_LEN <= c.long_len <= c.short_len + c.out_len, "long_len",
          f"{MIN_CLIP_LEN} <= long_len <= short_len + out_len = {c.short_len + c.out_len}")
    need(c.memory_slots >= 1, "memory_slots", ">= 1")
    need(isinstance(c.width, (int, float)) and 0 < c.width <= 4, "width",
          "a number in (0, 4]; 1.0 is the paper's network")
    need(c.query in QUERY_MODES, "query", " | ".join(QUERY_MODES))
    need(c.output_activation in OUTPUT_ACTIVATIONS, "output_activation",
          " | ".join(OUTPUT_ACTIVATIONS))
    need(c.convlstm_layers >= 1, "convlstm_layers", ">= 1")
    need(isinstance(c.lr, (int, float)) and c.lr > 0, "lr", "a number > 0")
    need(c.batch_size >= 1, "batch_size", ">= 1")
    need(c.iterations >= 1, "iterations", ">= 1")
    need(c.warmup_iterations >= 0, "warmup_iterations", ">= 0")
    if c.warmup_iterations > 0:
        need(1 <= c.warmup_out_len <= c.out_len, "warmup_out_len",
              f"1 <= warmup_out_len <= out_len = {c.out_len} (or warmup_iterations = 0)")


# The one place for presets. Paper values from §4.1 and the reference's training commands.
PRESETS: dict[str, LMCConfig] = {
    "paper-mmnist": LMCConfig(channels=1, img_size=64, short_len=10, long_len=30, out_len=30,
                              output_activation="linear", batch_size=128),
    "paper-kth": LMCConfig(channels=1, img_size=128, short_len=10, long_len=40, out_len=40,
                           output_activation="sigmoid", batch_size=32),
    "paper-h36m": LMCConfig(channels=3, img_size=64, short_len=10, long_len=40, out_len=40,
                            output_activation="sigmoid", batch_size=32),
    # A model small enough to train for minutes on a 2-core CPU (about 0.5M parameters).
    "tiny": LMCConfig(channels=1, img_size=64, short_len=10, long_len=20, out_len=10,
                      memory_slots=32, width=0.125, convlstm_layers=2,
                      output_activation="sigmoid", batch_size=8, iterations=300,
                      warmup_iterations=0, lr=1e-3),
    # Between tiny and the paper (about 2M parameters): the small-scale reproductions in
    # results/, an hour or two of a 2-core CPU each. Same model and loss as the paper; a
    # quarter of its widths, 2 ConvLSTM layers, fewer slots, a larger learning rate.
    "small-mmnist": LMCConfig(channels=1, img_size=32, short_len=10, long_len=20, out_len=10,
                              memory_slots=50, width=0.25, convlstm_layers=2,
                              output_activation="linear", batch_size=16, iterations=6000,
                              warmup_iterations=0, lr=1e-3),
    "small-kth": LMCConfig(channels=1, img_size=64, short_len=10, long_len=20, out_len=10,
                           memory_slots=50, width=0.25, convlstm_layers=2,
                           output_activation="sigmoid", batch_size=8, iterations=4000,
                           warmup_iterations=0, lr=1e-3),
}


def preset(name: str, **overrides: Any) -> LMCConfig:
    """A named preset (``paper-mmnist``, ``paper-kth``, ``paper-h36m``, ``tiny``), optionally
    with fields replaced, e.g. ``preset("paper-kth", memory_slots=50)``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    if overrides:
        known = {f.name for f in fields(LMCConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; allowed: {sorted(known)}")
        cfg = dataclasses.replace(cfg, **overrides)
    return cfg
