"""Clip-pair shards: the Parquet schema, the output folder's rules, and the manifest.

Layout of an output folder (local or s3://):

    manifest.json        written last; without it the folder is not a dataset
    errors.jsonl         one {"path", "reason"} per skipped input
    verified.json        files a job has verified already (``pipeline.integrity``; optional)
    train/part-<sha>.parquet, test/part-<sha>.parquet

Each row is one clip pair. `frames` holds the window's raw uint8 pixels in C order; reshape with
the row's own `(num_frames, height, width, channels)` columns (`frames_from_row`). Files are
zstd-compressed, in small row groups, named by their content's sha256 (which the manifest also
records), so a retried task rewrites the same name instead of adding a duplicate. The Ray Data
sink that writes them is `pipeline.sink`.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.config import ShardConfig
from pipeline.storage import Location

SCHEMA_VERSION = 1
FORMAT = "lmc-clip-pairs"
MANIFEST, ERRORS = "manifest.json", "errors.jsonl"
RECORD = "verified.json"      # what pipeline.integrity verified already (not part of the dataset)
SPLITS = ("train", "test")
SHARD_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("split", pa.string()),
    ("start", pa.int64()),        # first frame of the window in the source video (0-based)
    ("frames", pa.binary()),      # uint8, C order, shape (num_frames, height, width, channels)
    ("num_frames", pa.int32()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("channels", pa.int32()),
    ("short_len", pa.int32()),
    ("out_len", pa.int32()),
    ("long_len", pa.int32()),     # null when the config did not fix it
    ("action", pa.string()),      # labels: null when the source has none
    ("person", pa.int32()),
    ("scenario", pa.string()),
])
LABEL_COLUMNS = ("action", "person", "scenario")
FRAMES_LAYOUT = {"column": "frames", "dtype": "uint8", "order": "C",
                 "shape": ["num_frames", "height", "width", "channels"]}


class OutputExistsError(FileExistsError):
    """The output holds something this run must not mix into."""


def frames_from_row(row) -> np.ndarray:
    """A shard row (dict, pandas row, Ray row) -> (T, H, W, C) uint8 frames."""
    shape = tuple(int(row[k]) for k in FRAMES_LAYOUT["shape"])
    return np.frombuffer(row["frames"], np.uint8).reshape(shape)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(config: ShardConfig, source: dict) -> str:
    """What makes two runs the same dataset: schema version, content-relevant config, source."""
    blob = json.dumps({"schema_version": SCHEMA_VERSION, "config": config.identity(),
                       "source": source}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_manifest(path: str | Location) -> dict:
    """The manifest of a shard folder; a clear error if there is none (no dataset there)."""
    loc = path if isinstance(path, Location) else Location.of(path)
    if not loc.exists(MANIFEST):
        raise FileNotFoundError(
            f"{loc.uri}: no {MANIFEST}, so this is not a finished shard dataset "
            "(never prepared, or the preparing run was interrupted)")
    manifest = json.loads(loc.read_bytes(MANIFEST))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{loc.uri}/{MANIFEST}: not an {FORMAT} manifest")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{loc.uri}: schema version {manifest.get('schema_version')}, this code "
                         f"reads version {SCHEMA_VERSION}; prepare the data again")
    return manifest


class DataError(ValueError):
    """Shards that cannot feed what was asked of them: no dataset at the path, an empty split,
    missing shard files, or frames and windows other than the model needs. Names both sides."""


@dataclass(frozen=True)
class DatasetFacts:
    """What a shard folder holds, read once from its manifest: the one place a model config,
    a protocol or a loader is checked against the data (``require``, ``split_files``)."""

    path: str
    dataset: str | None          # "kth", "mmnist", "h36m", "folder", ... (the source's name)
    channels: int
    img_size: int
    short_len: int
    train_window_len: int        # short_len + out_len
    test_window_len: int         # short_len + test_out_len (out_len when not set)
    rows: dict                   # split -> windows
    bytes: dict                  # split -> bytes of Parquet
    shards: tuple                # the manifest's shard entries ({"path", "split", ...})

    @classmethod
    def read(cls, path: str | Location) -> "DatasetFacts":
        loc = path if isinstance(path, Location) else Location.of(path)
        try:
            m = read_manifest(loc)
        except (OSError, ValueError) as e:
            raise DataError(str(e)) from None
        c = m["config"]
        return cls(path=loc.uri, dataset=m.get("source", {}).get("dataset"),
                   channels=int(c["channels"]), img_size=int(c["img_size"]),
                   short_len=int(c["short_len"]),
                   train_window_len=int(c["short_len"]) + int(c["out_len"]),
                   test_window_len=int(c["short_len"]) + int(c.get("test_out_len") or c["out_len"]),
                   rows=dict(m.get("rows", {})), bytes=dict(m.get("bytes", {})),
                   shards=tuple(m.get("shards", [])))

    @property
    def test_out_len(self) -> int:
        return self.test_window_len - self.short_len

    def row_shape(self, split: str) -> dict:
        """What every row of ``split`` holds by the manifest: {"num_frames", "height", "width",
        "channels"} (the loaders' ``expect``; ``pipeline.verify_dataset`` checks the shards
        agree)."""
        return {"num_frames": self.test_window_len if split == "test" else self.train_window_len,
                "height": self.img_size, "width": self.img_size, "channels": self.channels}

    def split_files(self, split: str) -> list[str]:
        """The shard files of ``split`` (relative paths), after checking that the split is
        known, not empty, and that every file the manifest lists is there."""
        if split not in self.rows:
            raise DataError(f"split={split!r}: allowed {sorted(self.rows)}")
        if not self.rows[split]:
            raise DataError(f"{self.path}: the {split!r} split is empty (0 windows); see "
                            f"{self.path}/{ERRORS} for skipped inputs")
        loc = Location.of(self.path)
        files = [s["path"] for s in self.shards if s["split"] == split]
        missing = [f for f in files if not loc.exists(f)]
        if missing:
            raise DataError(f"{self.path}: {len(missing)} shard file(s) listed in {MANIFEST} are "
                            f"missing (e.g. {missing[0]}); prepare the data again")
        return files

    def require(self, *, who: str = "the model", channels: int | None = None,
                img_size: int | None = None, short_len: int | None = None,
                train_len: int | None = None, test_len: int | None = None,
                splits: tuple = ()) -> None:
        """Raise ``DataError`` unless these shards can feed ``who``: frames of ``channels`` and
        ``img_size``, windows that start with ``short_len`` input frames, train windows of at
        least ``train_len`` frames, test windows of at least ``test_len``, and non-empty
        ``splits`` whose files are all there. Every mismatch is listed with its fix."""
        problems = []
        if channels is not None and channels != self.channels:
            problems.append(f"channels: the shards hold {self.channels}-channel frames, {who} "
                            f"expects {channels} (prepare with --channels {channels})")
        if img_size is not None and img_size != self.img_size:
            problems.append(f"img_size: the shards hold {self.img_size}x{self.img_size} frames, "
                            f"{who} expects {img_size}x{img_size} (prepare with --img-size "
                            f"{img_size})")
        if short_len is not None and short_len != self.short_len:
            problems.append(f"short_len: the shards' windows start with {self.short_len} input "
                            f"frames, {who} feeds {short_len} (prepare with --short-len "
                            f"{short_len})")
        for split, need, have, flag in (("train", train_len, self.train_window_len, "--out-len"),
                                        ("test", test_len, self.test_window_len, "--test-out-len")):
            if need is not None and need > have:
                problems.append(f"{split} windows: the shards hold {have} frames, {who} needs "
                                f"{need} (prepare with {flag} {need - self.short_len} or more)")
        if problems:
            raise DataError(f"{self.path} cannot feed {who}: " + "; ".join(problems))
        for split in splits:
            self.split_files(split)


def _ours(rel: str) -> bool:
    """Files a preparing run may have left (and may therefore delete)."""
    head = rel.split("/", 1)[0]
    return (rel in (MANIFEST, ERRORS, RECORD) or head in SPLITS
            or rel.rsplit("/", 1)[-1].startswith(".tmp-"))


def _config_diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys
                     if old.get(k) != new.get(k)) or "schema version"


def check_output(out: Location, fp: str, config: ShardConfig, source: dict,
                 overwrite: bool) -> dict | None:
    """Decide what to do with the output folder before any work.

    Returns the existing manifest when it already holds this exact dataset (the run is a no-op),
    else None (the caller then `clear_output`s it). Refuses (OutputExistsError)
    to mix into a dataset made with another config, or into a folder holding other files,
    unless `overwrite`.
    """
    files = out.list_files()
    if MANIFEST in files:
        manifest = read_manifest(out)
        if manifest["fingerprint"] == fp and not overwrite:
            missing = [s["path"] for s in manifest["shards"] if out.size(s["path"]) != s["bytes"]]
            if missing:
                raise OutputExistsError(
                    f"{out.uri}: the dataset is complete by its manifest but {len(missing)} "
                    f"shard(s) are missing or resized (e.g. {missing[0]}); pass overwrite=True "
                    "(--overwrite) to prepare it again")
            return manifest
        if manifest["fingerprint"] != fp and not overwrite:
            now = json.loads(json.dumps({**config.to_dict(), **source}, default=str))
            diff = _config_diff({**manifest["config"], **manifest["source"]}, now)
            raise OutputExistsError(
                f"{out.uri} already holds shards prepared with a different config ({diff}); "
                "refusing to mix them. Use another output, or overwrite=True (--overwrite) to "
                "replace them")
    elif any(not _ours(f) for f in files) and not overwrite:
        raise OutputExistsError(
            f"{out.uri} is not empty and is not a shard dataset (e.g. {next(f for f in files if not _ours(f))}); "
            "refusing to write into it. Use an empty folder, or overwrite=True (--overwrite)")
    return None


def clear_output(out: Location) -> None:
    """Delete this pipeline's files (a replaced dataset, or an interrupted run's leftovers)."""
    for f in out.list_files():
        if _ours(f):
            out.delete(f)


def commit(out: Location, result: dict, config: ShardConfig, source: dict, fp: str,
           summary: dict) -> dict:
    """Write errors.jsonl, drop stray shard files, then the manifest (last)."""
    errors = sorted(result["errors"], key=lambda e: e["path"])
    out.write_bytes("".join(json.dumps(e) + "\n" for e in errors).encode(), ERRORS)
    shards = sorted(result["shards"], key=lambda s: s["path"])
    listed = {s["path"] for s in shards}
    for f in out.list_files():  # files of failed task attempts that were retried
        if f.split("/", 1)[0] in SPLITS and f not in listed:
            out.delete(f)
    manifest = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "fingerprint": fp,
        "config": config.to_dict(), "source": source, "frames": FRAMES_LAYOUT,
        "rows": {s: sum(x["rows"] for x in shards if x["split"] == s) for s in SPLITS},
        "bytes": {s: sum(x["bytes"] for x in shards if x["split"] == s) for s in SPLITS},
        "errors": len(errors), "shards": shards, "summary": summary,
    }
    out.write_bytes(json.dumps(manifest, indent=1).encode(), MANIFEST)
    return manifest


def verify(path: str) -> list[str]:
    """Re-hash every shard against the manifest; returns the problems found (empty = intact)."""
    loc = Location.of(path)
    problems = []
    for s in read_manifest(loc)["shards"]:
        if not loc.exists(s["path"]):
            problems.append(f"{s['path']}: missing")
            continue
        local, temp = loc.fetch(s["path"])
        try:
            if sha256_file(local) != s["sha256"]:
                problems.append(f"{s['path']}: checksum mismatch")
        finally:
            if temp:
                os.remove(local)
    return problems
