"""Rows that flow from the sources' generators to the shard writer.

Besides window rows (one clip pair each) a generator emits one bookkeeping row per input: a
`video` row (the input was read; how many frames were decoded) or an `error` row (skipped; why).
They travel through the same Ray Data blocks, so every skip reaches `errors.jsonl` without side
channels; the writer keeps them out of the shards.
"""
from __future__ import annotations

import numpy as np

KIND, PATH, REASON, DECODED = "_kind", "_path", "_reason", "_decoded"
_COLUMNS = (KIND, PATH, REASON, DECODED, "video_id", "split", "start", "frames", "num_frames",
            "height", "width", "channels", "short_len", "out_len", "long_len", "action",
            "person", "scenario")
_EMPTY = dict.fromkeys(_COLUMNS)  # every row carries every column: blocks stay rectangular


def window_row(frames: np.ndarray, item: dict, start: int, short_len: int,
               long_len: int | None) -> dict:
    """One clip pair: frames (T, H, W, C) uint8 plus identity, labels and lengths."""
    t, h, w, c = frames.shape
    return {**_EMPTY, KIND: "window", "video_id": item["video_id"], "split": item["split"],
            "start": int(start), "frames": np.ascontiguousarray(frames, np.uint8).tobytes(),
            "num_frames": t, "height": h, "width": w, "channels": c,
            "short_len": short_len, "out_len": t - short_len, "long_len": long_len,
            "action": item.get("action"), "person": item.get("person"),
            "scenario": item.get("scenario")}


def video_row(path: str, decoded: int) -> dict:
    return {**_EMPTY, KIND: "video", PATH: path, DECODED: int(decoded)}


def error_row(path: str, reason: str) -> dict:
    return {**_EMPTY, KIND: "error", PATH: path, REASON: reason}
