"""Video files -> windows: the per-video step that runs inside a Ray Data task.

`VideoSourceBase.rows(item, config)` fetches one video (a temp copy when it lives on S3), decodes
the frames its windows need in the worker's isolated decoder (resize + luma at decode), cuts the
windows and yields one row per window, then a `video` row; or, for a video that cannot be used,
only an `error` row with the reason. A video is all-or-nothing: its frames are decoded before any
window is emitted, so a failure half-way leaves no partial video in the shards.
"""
from __future__ import annotations

import json
import math
import os
from typing import Iterator

import numpy as np

from pipeline.config import ShardConfig
from pipeline.decode import DecodeError, container_problem, worker_decoder
from pipeline.rows import error_row, video_row, window_row
from pipeline.storage import Location
from pipeline.windows import frames_needed, segment_window_starts, split_stride, window_starts

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv")


def video_item(rel: str, video_id: str, split: str, labels: dict | None = None,
               segments: list[tuple[int, int]] | None = None,
               expected_size: tuple[int, int] | None = None) -> dict:
    """The driver-side description of one video (small, JSON-able: it rides in a Ray block)."""
    labels = labels or {}
    return {"kind": "video", "rel": rel, "video_id": video_id, "split": split,
            "action": labels.get("action"), "person": labels.get("person"),
            "scenario": labels.get("scenario"),
            "segments": json.dumps(segments) if segments else None,
            "expected_size": json.dumps(expected_size) if expected_size else None}


def plan_starts(num_frames: int, item: dict, config: ShardConfig) -> list[int]:
    """Window starts in *kept*-frame indices (after `frame_step` subsampling)."""
    length = config.window_len_for(item["split"])
    stride = split_stride(item["split"], length, config.train_stride)
    kept = math.ceil(num_frames / config.frame_step)
    if not item.get("segments"):
        return window_starts(kept, length, stride)
    step = config.frame_step
    segments = [(math.ceil(a / step), math.ceil(b / step)) for a, b in json.loads(item["segments"])]
    return segment_window_starts(segments, kept, length, stride)


class VideoSourceBase:
    """Shared behaviour of sources whose inputs are video files under one location."""

    input: str

    @property
    def location(self) -> Location:
        if getattr(self, "_location", None) is None:
            loc = Location.of(self.input)
            if loc.is_local and os.path.isfile(loc.root):
                raise NotADirectoryError(
                    f"input {self.input} is a file; give the folder (or s3:// prefix) that "
                    "holds the videos or frame folders")
            self._location = loc
        return self._location

    def rows(self, item: dict, config: ShardConfig) -> Iterator[dict]:
        if item["kind"] == "error":
            yield error_row(item["path"], item["reason"])
            return
        yield from decode_and_window(self.location, item, config)


def decode_and_window(loc: Location, item: dict, config: ShardConfig) -> Iterator[dict]:
    """One video -> its window rows and a `video` row, or a single `error` row."""
    uri = loc.uri_of(item["rel"])
    local, is_temp = None, False
    try:
        size = loc.size(item["rel"])
        if size is None:
            raise DecodeError("unreadable: not a regular file (a dangling link?)")
        if size == 0:
            raise DecodeError("empty file (0 bytes)")
        local, is_temp = loc.fetch(item["rel"])
        problem = container_problem(local)
        if problem:
            raise DecodeError(problem)
        decoder = worker_decoder(config.decode_timeout_s)
        info = decoder.open(local, size=config.img_size, channels=config.channels,
                            threads=config.decode_threads)
        expected = json.loads(item["expected_size"]) if item.get("expected_size") else None
        if expected and [info.width, info.height] != list(expected):
            raise DecodeError(f"unexpected frame size {info.width}x{info.height}, "
                              f"expected {expected[0]}x{expected[1]}")
        length = config.window_len_for(item["split"])
        starts = plan_starts(info.num_frames, item, config)
        if not starts:
            where = "its sub-sequences" if item.get("segments") else "its frames"
            raise DecodeError(f"too short: {info.num_frames} frames (frame_step "
                              f"{config.frame_step}); {where} hold no {item['split']} window "
                              f"of {length}")
        frames = {}  # span start -> (T, S, S, C) uint8, in kept-frame indices
        for a, b in frames_needed(starts, length):
            chunks = [decoder.read(c * config.frame_step,
                                   min(b, c + config.decode_chunk) * config.frame_step,
                                   config.frame_step)
                      for c in range(a, b, config.decode_chunk)]
            frames[a] = np.concatenate(chunks)
            if len(frames[a]) != b - a:
                raise DecodeError(f"decoded {len(frames[a])} frames where {b - a} were expected")
    except DecodeError as exc:
        yield error_row(uri, str(exc))
        return
    except OSError as exc:
        yield error_row(uri, f"unreadable: {exc}"[:300])
        return
    finally:
        if is_temp:
            os.remove(local)
    decoded = sum(len(f) for f in frames.values())
    span_starts = sorted(frames)
    for s in starts:
        a = max(x for x in span_starts if x <= s)  # the span holding this window
        yield window_row(frames[a][s - a:s - a + length], item, s * config.frame_step,
                         config.short_len, config.long_len)
    yield video_row(uri, decoded)
