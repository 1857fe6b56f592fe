"""Rows that flow from the sources' generators to the shard writer.

Besides window rows (one clip pair each) a generator emits one bookkeeping row per input: a
`video` row (the input was read; how many frames were decoded) or an `error` row (skipped; why).
They travel through the same Ray Data blocks, so every skip reaches `errors.jsonl` without side
channels; the writer keeps them out of the shards.
"""
from __future__ import annotations

import numpy as np

KIND, PATH, REASON, DECODED = "_kind", "_path", "_reason", "_decoded"


def window_row(frames: np.ndarray, item: dict, start: int, short_len: int,
               long_len: int | None) -> dict:
    """One clip pair: frames (T, H, W, C) uint8 plus identity, labels and lengths."""
    t, h, w, c = frames.shape
    return {KIND: "window", "video_id": item["video_id"], "split": item["split"],
            "start": int(start), "frames": np.ascontiguousarray(frames, np.uint8).tobytes(),
            "num_frames": t, "height": h, "width": w, "channels": c,
            "short_len": short_len, "out_len": t - short_len, "long_len": long_len,
            "action": item.get("action"), "person": item.get("person"),
            "scenario": item.get("scenario")}


def video_row(path: str, decoded: int) -> dict:
    return {KIND: "video", PATH: path, DECODED: int(decoded)}


def error_row(path: str, reason: str) -> dict:
    return {KIND: "error", PATH: path, REASON: reason}
