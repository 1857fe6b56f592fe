"""Any folder (or s3:// prefix) of videos, and the reference's frame folders.

Videos: every file with a video extension is one video; its id is its path relative to the input
without the extension. Frame folders (`[split/]video_xxxxx/frame_xxxxx.jpg`): every directory
holding image files is one video, frames ordered by the number in their names. With `split=None`
the first path component must be `train` or `test` (the reference's layout); anything else
there is recorded as skipped.
"""
from __future__ import annotations

import io
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pipeline.config import ShardConfig
from pipeline.decode import luma
from pipeline.rows import error_row, video_row, window_row
from pipeline.sources.videos import VIDEO_EXTENSIONS, VideoSourceBase, plan_starts, video_item

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
SPLITS = ("train", "test")
_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def frame_order(name: str) -> tuple[int, str]:
    """Sort key of a frame file: the last number in its name (frame_9 before frame_10)."""
    m = _NUMBER.search(name)
    return (int(m.group(1)) if m else -1, name)


def frame_files(folder) -> list[str]:
    """The image files directly in a local ``folder``, in frame order (as this source reads
    a frame folder)."""
    import os
    names = [n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))
             and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(names, key=frame_order)


@dataclass
class FolderSource(VideoSourceBase):
    """Video files and/or frame folders under `input`, all in `split` (or split by folder)."""

    input: str
    split: str | None = None
    expected_size: tuple[int, int] | None = None  # native (w, h) if every input must have it

    def __post_init__(self):
        if self.split not in (None, *SPLITS):
            raise ValueError(f"split={self.split!r}: allowed 'train', 'test' or None "
                             "(first folder level names the split)")

    def describe(self) -> dict:
        return {"dataset": "folder", "input": self.input, "split": self.split,
                "expected_size": self.expected_size}

    def _split_of(self, rel: str) -> tuple[str | None, str]:
        """(split, id path) of a relative path, or (None, rel) if it has no split."""
        if self.split is not None:
            return self.split, rel
        head, _, rest = rel.partition("/")
        return (head, rest) if head in SPLITS and rest else (None, rel)

    def items(self) -> list[dict]:
        items, frame_dirs = [], defaultdict(list)
        for rel in self.location.list_files():
            ext = "." + rel.rsplit(".", 1)[-1].lower() if "." in rel else ""
            if ext not in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
                continue  # READMEs, sequence files, hidden files: not inputs
            split, idpath = self._split_of(rel)
            if split is None:
                items.append({"kind": "error", "path": self.location.uri_of(rel),
                              "reason": "not under a train/ or test/ folder"})
            elif ext in VIDEO_EXTENSIONS:
                items.append(video_item(rel, idpath.rsplit(".", 1)[0], split,
                                        expected_size=self.expected_size))
            elif "/" in rel:
                frame_dirs[rel.rsplit("/", 1)[0]].append(rel)
        for folder, files in sorted(frame_dirs.items()):
            split, idpath = self._split_of(folder + "/x")
            items.append({"kind": "frames", "rel": folder, "video_id": idpath[:-2], "split": split,
                          "files": sorted(files, key=frame_order), "action": None,
                          "person": None, "scenario": None, "segments": None})
        return items

    def rows(self, item: dict, config: ShardConfig) -> Iterator[dict]:
        if item["kind"] == "frames":
            yield from frame_folder_rows(self.location, item, config)
        else:
            yield from super().rows(item, config)


def frame_folder_rows(loc, item: dict, config: ShardConfig) -> Iterator[dict]:
    """One frame folder -> window rows + a `video` row, or an `error` row (bad image, short)."""
    from PIL import Image

    uri = loc.uri_of(item["rel"])
    length = config.window_len_for(item["split"])
    files = list(item["files"])
    starts = plan_starts(len(files), item, config)
    if not starts:
        yield error_row(uri, f"too short: {len(files)} frames hold no {item['split']} "
                             f"window of {length}")
        return
    needed = sorted({(s + k) * config.frame_step for s in starts for k in range(length)})
    frames = {}
    for i in needed:
        try:
            with Image.open(io.BytesIO(loc.read_bytes(files[i]))) as im:
                rgb = np.asarray(im.convert("RGB").resize((config.img_size, config.img_size),
                                                          Image.BILINEAR))
        except Exception as exc:  # PIL raises several types for bad images
            yield error_row(uri, f"unreadable frame {files[i]}: {type(exc).__name__}: {exc}"[:300])
            return
        frames[i] = luma(rgb) if config.channels == 1 else rgb
    for s in starts:
        clip = np.stack([frames[(s + k) * config.frame_step] for k in range(length)])
        yield window_row(clip, item, s * config.frame_step, config.short_len, config.long_len)
    yield video_row(uri, len(frames))
