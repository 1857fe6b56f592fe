"""Reading shards back: Ray Datasets for training, plain pyarrow for evaluation.

Training: `load_split(path, "train")` -> a Ray Dataset (hand it to Ray Train's `datasets=`), and
on each worker `iter_train_batches(ray.train.get_dataset_shard("train"), ...)` -> float windows
`(N, short_len + out_len, C, H, W)` in [0, 1], locally shuffled with a seeded buffer.

Evaluation: `iter_test_windows(path, batch_size=...)` reads the test shards with pyarrow only,
in a fixed order (sorted by video id, then start frame), whatever order the shards were written.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Iterator, Mapping, Sequence

import numpy as np
import pyarrow.parquet as pq

from pipeline.shards import FRAMES_LAYOUT, LABEL_COLUMNS, MANIFEST, DataError, DatasetFacts
from pipeline.storage import Location

_COLUMNS = ["frames", *FRAMES_LAYOUT["shape"]]


def _split_files(path: str, split: str) -> tuple[Location, list[str]]:
    """The manifest-listed shard paths of a split (``DataError`` for missing/empty ones)."""
    loc = Location.of(path)
    return loc, DatasetFacts.read(loc).split_files(split)


def load_split(path: str, split: str, read_cpus: float | None = None):
    """A split's shards as a `ray.data.Dataset` (rows as stored; see `frames_from_row`).
    ``read_cpus``: the CPUs each read task asks Ray for (Ray Data's default: 1)."""
    import ray

    loc, files = _split_files(path, split)
    return ray.data.read_parquet([loc.path(f) for f in files], filesystem=loc.fs,
                                 num_cpus=read_cpus)


def _to_windows(frames: np.ndarray, shape: tuple, window_len: int | None):
    """Column of frame bytes (N,) -> float32 torch tensor (N, T, C, H, W) in [0, 1]."""
    import torch

    t, h, w, c = shape
    if window_len is not None and window_len > t:
        raise DataError(f"the shards hold windows of {t} frames; "
                        f"{window_len} (short_len + out_len) were asked for")
    sizes = {len(f) for f in frames}
    if sizes != {t * h * w * c}:
        raise DataError(f"shard rows hold {sorted(sizes)} bytes of frames where their columns say "
                        f"{t}x{h}x{w}x{c} = {t * h * w * c}: corrupt shards; prepare the data "
                        "again")
    data = np.frombuffer(bytearray(b"".join(frames)), np.uint8).reshape(len(frames), t, h, w, c)
    if window_len is not None:
        data = data[:, :window_len]
    x = torch.from_numpy(data).permute(0, 1, 4, 2, 3).contiguous()  # (N, T, C, H, W) uint8
    return x.to(torch.float32).div_(255.0)


def _batch_shape(batch: dict, expect: Mapping[str, int] | None = None,
                 source: str = "the caller") -> tuple:
    """The rows' (num_frames, height, width, channels), one for the whole batch; ``DataError``
    when rows differ or disagree with ``expect`` (any of those keys; ``source`` says whose)."""
    shape = tuple(int(batch[k][0]) for k in FRAMES_LAYOUT["shape"])
    for k, v in zip(FRAMES_LAYOUT["shape"], shape):
        if np.any(np.asarray(batch[k]) != v):
            seen = sorted({int(x) for x in np.asarray(batch[k])})
            raise DataError(f"rows of different {k} ({seen}) in one batch: the shards mix window "
                            "shapes; prepare the data again")
    if expect:
        unknown = [k for k in expect if k not in FRAMES_LAYOUT["shape"]]
        if unknown:
            raise ValueError(f"expect: unknown key(s) {unknown}; allowed "
                             f"{', '.join(FRAMES_LAYOUT['shape'])}")
        have = dict(zip(FRAMES_LAYOUT["shape"], shape))
        diff = [k for k, v in expect.items() if v is not None and int(v) != have[k]]
        if diff:
            raise DataError(
                "the shard rows hold " + ", ".join(f"{k}={have[k]}" for k in diff)
                + f" but {source} says " + ", ".join(f"{k}={expect[k]}" for k in diff)
                + ": the manifest and the shards disagree (an edited manifest, or shards of "
                "another preparation); prepare the data again")
    return shape


def shuffle_buffer_rows(row_bytes: int, batch_size: int, budget_bytes: int = 256 << 20,
                        max_rows: int = 4096) -> int:
    """Rows for the local shuffle buffer: as many as ``budget_bytes`` of stored frames hold
    (between 4 batches and ``max_rows``). Shards store a video's windows next to each other,
    so a buffer of a few batches would fill each batch from two or three videos; a buffer of
    thousands of windows draws batches nearly as a uniform sampler does."""
    fits = budget_bytes // max(1, int(row_bytes))
    return int(max(4 * batch_size, min(max_rows, fits)))


def iter_train_batches(data_iterable, *, batch_size: int, window_len: int, seed: int,
                       local_shuffle_buffer_size: int | None = None, epochs: int | None = 1,
                       drop_last: bool = True, prefetch_batches: int = 1,
                       expect: Mapping[str, int] | None = None) -> Iterator:
    """Training batches from a Ray `DataIterator` (a worker's dataset shard) or a `Dataset`.

    Yields float32 tensors (N, window_len, C, H, W) in [0, 1]: the first ``window_len`` frames
    of each stored window (short_len + out_len; the long clip's offset r is the training
    step's to draw). Rows are shuffled locally through a buffer of `local_shuffle_buffer_size`
    rows (default 4 x batch_size, at least 64; 0 turns shuffling off), with a seed that changes
    per epoch. `epochs=None` loops forever; the training loop decides when to stop.
    `expect`: what the rows must hold, any of num_frames, height, width, channels (e.g. the
    manifest's ``DatasetFacts.row_shape("train")``, or the model's channels and img_size as
    height and width); a row that differs is a ``DataError`` naming both values.
    """
    if window_len < 1:
        raise ValueError(f"window_len={window_len}: allowed >= 1")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: allowed >= 1")
    if local_shuffle_buffer_size is None:
        local_shuffle_buffer_size = max(64, 4 * batch_size)
    for epoch in itertools.count() if epochs is None else range(epochs):
        batches = data_iterable.iter_batches(
            batch_size=batch_size, batch_format="numpy", drop_last=drop_last,
            prefetch_batches=prefetch_batches,
            local_shuffle_buffer_size=local_shuffle_buffer_size or None,
            local_shuffle_seed=(seed * 1_000_003 + epoch) if local_shuffle_buffer_size else None)
        for batch in batches:
            yield _to_windows(batch["frames"], _batch_shape(batch, expect), window_len)


class _RowGroupCache:
    """Decoded row groups of a few shard files, for reading rows in a global order."""

    def __init__(self, loc: Location, columns: list[str], capacity: int = 4):
        self.loc, self.columns, self.capacity = loc, columns, capacity
        self.files: dict[str, pq.ParquetFile] = {}
        self.groups: OrderedDict = OrderedDict()

    def file(self, path: str) -> pq.ParquetFile:
        if path not in self.files:
            self.files[path] = pq.ParquetFile(self.loc.fs.open_input_file(self.loc.path(path)))
        return self.files[path]

    def group(self, path: str, index: int):
        key = (path, index)
        if key not in self.groups:
            self.groups[key] = self.file(path).read_row_group(index, columns=self.columns)
            if len(self.groups) > self.capacity:
                self.groups.popitem(last=False)
        self.groups.move_to_end(key)
        return self.groups[key]


def iter_test_windows(path: str, *, batch_size: int, split: str = "test",
                      short_len: int | None = None, out_len: int | None = None,
                      labels: Sequence[str] = ()) -> Iterator[dict]:
    """Evaluation windows in a fixed order (video_id, then start), with pyarrow only.

    Yields {"window": float32 (N, T, C, H, W) in [0, 1], "video_id": [str], "start": [int],
    and one list per label column asked for (e.g. "action"; None where the source has none)};
    T = short_len + out_len when both are given (a prefix of the stored window), else all
    stored frames. Memory holds a few row groups, not the split. Every row must hold what the
    manifest says (``DatasetFacts.row_shape``), else ``DataError`` naming both values.
    """
    unknown = [c for c in labels if c not in LABEL_COLUMNS]
    if unknown:
        raise DataError(f"label column(s) {unknown}: allowed {', '.join(LABEL_COLUMNS)}")
    loc = Location.of(path)
    facts = DatasetFacts.read(loc)
    files = facts.split_files(split)
    expect = facts.row_shape(split)
    window_len = short_len + out_len if short_len is not None and out_len is not None else None
    cache = _RowGroupCache(loc, _COLUMNS + list(labels))
    index = []  # (video_id, start, file, row group, row in group)
    for f in files:
        pf = cache.file(f)
        for g in range(pf.num_row_groups):
            keys = pf.read_row_group(g, columns=["video_id", "start"])
            index += [(v, s, f, g, i) for i, (v, s) in enumerate(
                zip(keys["video_id"].to_pylist(), keys["start"].to_pylist()))]
    index.sort()
    for b in range(0, len(index), batch_size):
        entries = index[b:b + batch_size]
        rows = [cache.group(f, g).slice(i, 1).to_pylist()[0] for _, _, f, g, i in entries]
        batch = {k: np.array([r[k] for r in rows]) for k in FRAMES_LAYOUT["shape"]}
        frames = np.array([r["frames"] for r in rows], dtype=object)
        shape = _batch_shape(batch, expect, f"{facts.path}/{MANIFEST}")
        yield {"window": _to_windows(frames, shape, window_len),
               "video_id": [e[0] for e in entries], "start": [e[1] for e in entries],
               **{c: [r[c] for r in rows] for c in labels}}
