"""Where windows start: pure functions, no I/O.

A window is `length` consecutive (kept) frames. Train windows start every `stride` frames; test
windows do not overlap (stride = length). Windows never cross a sub-sequence boundary.
"""
from __future__ import annotations

from typing import Iterable, Sequence


def window_starts(num_frames: int, length: int, stride: int) -> list[int]:
    """Starts of every full window of `length` frames in `num_frames`, `stride` apart."""
    if length < 1 or stride < 1:
        raise ValueError(f"length and stride must be >= 1, got {length}, {stride}")
    return list(range(0, num_frames - length + 1, stride))


def split_stride(split: str, length: int, train_stride: int) -> int:
    """Train windows use the configured stride; test windows never overlap."""
    return length if split == "test" else train_stride


def segment_window_starts(segments: Iterable[tuple[int, int]], num_frames: int, length: int,
                          stride: int) -> list[int]:
    """Window starts inside each half-open segment [a, b), clipped to the video's frames.

    Segments come from a sequence file and may overrun the decoded video by a frame or two (the
    KTH file does); they are clipped, never extended. Starts are returned sorted and unique.
    """
    starts: set[int] = set()
    for a, b in segments:
        a, b = max(0, a), min(b, num_frames)
        starts.update(a + s for s in window_starts(b - a, length, stride))
    return sorted(starts)


def frames_needed(starts: Sequence[int], length: int) -> list[tuple[int, int]]:
    """Merge the windows' frame ranges into disjoint half-open spans to decode, in order."""
    spans: list[tuple[int, int]] = []
    for s in sorted(starts):
        if spans and s <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], s + length))
        else:
            spans.append((s, s + length))
    return spans
