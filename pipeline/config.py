"""The pipeline's one config: how raw frames become clip-pair windows and shards.

`ShardConfig` is validated on construction, before any Ray work starts; an invalid value raises
`ValueError` naming the field and what it accepts. The config (plus the source's description) is
what makes two runs "the same": it is stored in `manifest.json` and compared on re-runs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


def _require(ok: bool, field: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"ShardConfig.{field}={value!r} is invalid: allowed {allowed}")


@dataclass(frozen=True)
class ShardConfig:
    """Window and shard layout.

    A train row holds `short_len + out_len` frames; a test row holds `short_len + test_out_len`
    frames (test windows never overlap, as the reference evaluates), so one dataset can serve a
    10->10 training protocol and a 10->40 evaluation.
    """

    short_len: int = 10               # frames the model sees
    out_len: int = 10                 # frames it predicts (train windows)
    test_out_len: int | None = None   # frames predicted in test windows; None -> out_len
    long_len: int | None = None       # long clip length recorded in rows; None -> unknown
    img_size: int = 64                # output frames are img_size x img_size
    channels: int = 1                 # 1 = BT.601 luma of the decoded RGB frame, 3 = RGB
    train_stride: int = 10            # frames between consecutive train window starts
    frame_step: int = 1               # temporal subsampling: keep every frame_step-th frame
    decode_chunk: int = 256           # frames decoded per request (bounds decoder memory)
    decode_threads: int = 1           # decord threads per video (workers already run in parallel)
    decode_timeout_s: float = 600.0   # a video whose decoding takes longer is skipped
    inputs_per_task: int = 4          # videos (or sequence chunks) per Ray task: fewer task
                                      # start-ups, while keeping >= 2 tasks per cluster CPU
    row_group_rows: int = 32          # rows per Parquet row group (bounds reader memory)
    zstd_level: int = 3

    def __post_init__(self) -> None:
        for name in ("short_len", "out_len", "img_size", "train_stride", "frame_step",
                     "decode_chunk", "decode_threads", "row_group_rows", "inputs_per_task"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                     name, value, "an integer >= 1")
        _require(self.img_size >= 4 and self.img_size <= 4096, "img_size", self.img_size,
                 "an integer in [4, 4096]")
        _require(self.channels in (1, 3), "channels", self.channels, "1 (luma) or 3 (RGB)")
        if self.test_out_len is not None:
            _require(isinstance(self.test_out_len, int) and self.test_out_len >= 1,
                     "test_out_len", self.test_out_len, "None or an integer >= 1")
        if self.long_len is not None:
            _require(isinstance(self.long_len, int) and 1 <= self.long_len <= self.window_len,
                     "long_len", self.long_len,
                     f"None or an integer in [1, short_len + out_len = {self.window_len}]")
        _require(self.decode_timeout_s > 0, "decode_timeout_s", self.decode_timeout_s, "> 0")
        _require(isinstance(self.zstd_level, int) and 1 <= self.zstd_level <= 22, "zstd_level",
                 self.zstd_level, "an integer in [1, 22]")

    @property
    def window_len(self) -> int:
        """Frames in a train window."""
        return self.short_len + self.out_len

    @property
    def test_window_len(self) -> int:
        """Frames in a test window."""
        return self.short_len + (self.out_len if self.test_out_len is None else self.test_out_len)

    def window_len_for(self, split: str) -> int:
        return self.test_window_len if split == "test" else self.window_len

    def out_len_for(self, split: str) -> int:
        return self.window_len_for(split) - self.short_len

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """The fields that change the shards' contents (performance knobs excluded)."""
        d = self.to_dict()
        for knob in ("decode_chunk", "decode_threads", "decode_timeout_s", "inputs_per_task"):
            d.pop(knob)
        return d
